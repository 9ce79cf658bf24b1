"""DINOv2 patch features, the image input of the conditional prompting module (SPEC §4).

``DinoFeatures("facebook/dinov2-base")`` (a hub id or a local folder, with the same offline rules as Stable
Diffusion) or ``DinoFeatures("tiny")`` (a tiny random DINOv2, no download). Pre-processing is the Hugging Face
processor's: RGB → short side to 256 (bicubic) → centre crop 224 (floor offsets) → ImageNet mean / std. The
final layer norm's patch tokens are kept (CLS and register tokens dropped): ``(256, C)`` per image, C = 768 for
ViT-B/14. An optional disk cache is keyed by image content and model fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cache import TensorCache
from .features import image_key
from .models import (FOLDER_FINGERPRINT_OF, MINI_DIR, ModelNotAvailableError, download_hint, fingerprint_folder,
                     fingerprint_modules, hub_snapshot, local_folder, quiet_loading)

#: The DINOv2 the paper uses (ViT-B/14, 768-d).
DEFAULT_DINO_ID = "facebook/dinov2-base"
#: Widths of the public DINOv2 checkpoints (used when a prompt must be checked without loading the weights).
KNOWN_DINO_DIMS = {"facebook/dinov2-small": 384, "facebook/dinov2-base": 768, "facebook/dinov2-large": 1024,
                   "facebook/dinov2-giant": 1536}
RESIZE = 256
CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The tiny DINOv2: ViT with patch 14 at 224 px (→ 256 patches) and a small width.
TINY_DINO_CONFIG = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, patch_size=14,
                        image_size=224, layerscale_value=1.0)
#: Bumped whenever pre-processing or read-out changes (part of the cache key).
FEATURE_VERSION = "1"


def resized_size(width: int, height: int, short: int = RESIZE) -> tuple[int, int]:
    """``(W', H')``: the short side resized to ``short``, the long one to ``int(short · long / short_side)``."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_box(width: int, height: int, crop: int = CROP) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the centre crop in an image of ``width × height`` (floor offsets)."""
    if width < crop or height < crop:
        raise ValueError(f"cannot crop {crop}x{crop} from a {width}x{height} image")
    left, top = (width - crop) // 2, (height - crop) // 2
    return left, top, left + crop, top + crop


def preprocess(image: Image.Image, resize: int = RESIZE, crop: int = CROP) -> torch.Tensor:
    """PIL image → ``(3, crop, crop)`` float32, normalised with the ImageNet mean and std."""
    img = image.convert("RGB")
    img = img.resize(resized_size(*img.size, resize), Image.BICUBIC)
    img = img.crop(crop_box(*img.size, crop))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def build_tiny_dino(seed: int = 0):
    """A ``Dinov2Model`` of :data:`TINY_DINO_CONFIG`, weights drawn from ``seed`` (global RNG untouched)."""
    from transformers import Dinov2Config, Dinov2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dinov2Model(Dinov2Config(**TINY_DINO_CONFIG))
    return model.eval().requires_grad_(False)


def resolve_dino_folder(model: str) -> tuple[Path, str]:
    """A hub id or folder → ``(local folder holding config.json and weights, source)``."""
    if model == "mini":
        if not (MINI_DIR / "dino").is_dir():
            raise ModelNotAvailableError(f"{MINI_DIR / 'dino'}: the embedded model 'mini' is missing from this "
                                         "installation")
        return MINI_DIR / "dino", "embedded"
    path = local_folder(model, "DINOv2")
    if path is None:
        hint = download_hint(model, "dinov2-base", "--dino", "tiny DINOv2")
        return hub_snapshot(model, ["config.json", "*.safetensors"], "DINOv2 weights", hint), "hub"
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelNotAvailableError(f"{path}: not a DINOv2 folder (needs config.json and model weights)")
    return path, "folder"


def load_dino_model(model: str = DEFAULT_DINO_ID, seed: int = 0):
    """``(Dinov2Model in eval mode without gradients, identity dict)`` for ``"tiny"``, a hub id or a folder."""
    if model == "tiny":
        net = build_tiny_dino(seed)
        return net, {"model": "tiny", "source": "embedded", "seed": seed,
                     "fingerprint": fingerprint_modules(net), "fingerprint_of": "weights"}
    folder, source = resolve_dino_folder(model)
    from transformers import AutoConfig, AutoModel, Dinov2Model

    try:
        config = AutoConfig.from_pretrained(folder)
        cls = Dinov2Model if config.model_type == "dinov2" else AutoModel  # e.g. dinov2_with_registers
        with quiet_loading():
            net = cls.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotAvailableError(f"{folder}: could not load DINOv2: {e}") from e
    return net.eval().requires_grad_(False), {"model": model, "source": source, "folder": str(folder),
                                              "fingerprint": fingerprint_folder(folder),
                                              "fingerprint_of": FOLDER_FINGERPRINT_OF}


def dino_dim(model: str) -> int:
    """Feature width of a DINOv2 spec, without loading weights when it is known (``tiny`` or a public id); else
    from the folder's ``config.json``."""
    if model == "tiny":
        return int(TINY_DINO_CONFIG["hidden_size"])
    if model in KNOWN_DINO_DIMS:
        return KNOWN_DINO_DIMS[model]
    return int(json.loads((resolve_dino_folder(model)[0] / "config.json").read_text())["hidden_size"])


class DinoFeatures:
    """Frozen DINOv2 patch features of PIL images.

    Args:
        model: ``"tiny"``, a hub id (default ``facebook/dinov2-base``) or a local folder.
        seed: weight seed of the tiny model (ignored otherwise).
        cache_dir: optional on-disk cache (``<dir>/dino/<key>.safetensors``), written atomically.
        batch_size: images per ViT call.
        memory_cache: how many images' features to keep in memory (LRU, CPU); 0 disables.

    Attributes:
        dim: feature width C (768 for ViT-B, 48 for tiny).
        n_patches: 256 (16 × 16 patches of 14 px at 224 px).
        identity: ``{"model", "source", "fingerprint", ...}`` recorded in prompt files.
    """

    def __init__(self, model: str = DEFAULT_DINO_ID, device: str | torch.device = "cpu", seed: int = 0,
                 cache_dir: str | Path | None = None, batch_size: int = 16, memory_cache: int = 256):
        self.spec, self.seed = str(model), int(seed)
        self.net, self.identity = load_dino_model(self.spec, self.seed)
        self.device = torch.device(device)
        self.net.to(self.device)
        cfg = self.net.config
        self.dim = int(cfg.hidden_size)
        if CROP % cfg.patch_size:
            raise ValueError(f"DINOv2 patch size {cfg.patch_size} does not divide the {CROP}-px crop")
        self.n_patches = (CROP // cfg.patch_size) ** 2
        self.batch_size, self.memory_cache = int(batch_size), int(memory_cache)
        self.cache = TensorCache(cache_dir) if cache_dir else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    def describe(self) -> dict:
        """What a prompt file records about its DINOv2: spec, seed, width and a few patch-embedding weights (to
        recognise the DINOv2 a prompt was learned with)."""
        probe = [float(v) for v in self.net.embeddings.patch_embeddings.projection.weight.flatten()[:8].float().cpu()]
        return {**self.identity, "spec": self.spec, "dim": self.dim, "n_patches": self.n_patches, "probe": probe}

    def key(self, image: Image.Image) -> str:
        """Cache key of an image's features: its content, the model fingerprint, the pre-processing version."""
        parts = [FEATURE_VERSION, self.identity["fingerprint"], RESIZE, CROP, image_key(image)]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]

    @torch.no_grad()
    def compute(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Run the ViT (no cache): ``(B, n_patches, C)`` float32 on :attr:`device`."""
        out = []
        for s in range(0, len(images), self.batch_size):
            x = torch.stack([preprocess(im) for im in images[s : s + self.batch_size]]).to(self.device)
            hidden = self.net(pixel_values=x.to(self.net.dtype)).last_hidden_state  # (b, 1 + R + N, C)
            out.append(hidden[:, -self.n_patches :].float())  # drop CLS and register tokens
        return torch.cat(out) if out else torch.zeros(0, self.n_patches, self.dim, device=self.device)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Patch features of ``images``: ``(B, n_patches, C)`` float32 on :attr:`device`, without gradients, through
        the memory and disk caches."""
        keys = [self.key(im) for im in images]
        found: dict[str, torch.Tensor] = {}
        for k in keys:
            if k in self._memory:
                found[k] = self._memory[k]
                self._memory.move_to_end(k)
            elif self.cache is not None and (hit := self.cache.get("dino", k)) is not None:
                if hit.get("features") is not None and hit["features"].shape == (self.n_patches, self.dim):
                    found[k] = hit["features"]
        todo = list(dict.fromkeys(k for k in keys if k not in found))  # unique, in order
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            feats = self.compute([images[first[k]] for k in todo]).cpu()
            for k, f in zip(todo, feats):
                found[k] = f.clone()
                if self.cache is not None:
                    self.cache.put("dino", k, {"features": found[k]}, {"dino": self.identity})
        if self.memory_cache:
            for k in keys:
                self._memory[k] = found[k]
                self._memory.move_to_end(k)
            while len(self._memory) > self.memory_cache:
                self._memory.popitem(last=False)
        if not keys:
            return torch.zeros(0, self.n_patches, self.dim, device=self.device)
        return torch.stack([found[k] for k in keys]).to(self.device)
