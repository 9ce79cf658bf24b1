"""Dense features from the frozen UNet (SPEC §2).

image → square resize → [-1, 1] → VAE posterior sample (or mean) × scaling factor → ``z_t = sqrt(ᾱ_t) z_0 +
sqrt(1 − ᾱ_t) ε`` → UNet, stopped right after the deepest requested ``up_blocks[l]`` (forward hooks). An ensemble
of E noise copies of one VAE latent is averaged. Randomness is drawn per image from ``(seed, image content)`` and
no VAE or UNet call mixes two images (inputs in one fixed contiguous layout), so an image's features are the same
bits whichever images it is extracted with: resumed runs and caches stay exact.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cache import TensorCache, tensor_key

UP_BLOCKS = (0, 1, 2, 3)
LATENT_MODES = ("sample", "mean")
#: Part of every cache key: bumped when the arithmetic of the extraction changes (2: one image per VAE / UNet call).
_EXTRACTION_VERSION = 2


class _StopForward(Exception):
    """Raised from a forward hook to leave the UNet once the deepest needed block has run."""


class NonFiniteFeaturesError(ValueError):
    """A feature map holds NaN or Inf: never a prediction. ``n_more``: other images of the batch with the problem."""

    def __init__(self, name: str, layer: int, image_key: str | None = None, n_more: int = 0):
        self.name, self.layer, self.image_key, self.n_more = name, layer, image_key, n_more
        more = f" (and {n_more} more image(s))" if n_more else ""
        super().__init__(f"non-finite features (NaN or Inf) at up-block {layer} for image {name}{more}: the model "
                         f"weights or the prompt hold NaN / Inf values; no prediction is made from such features")

    def renamed(self, name: str) -> "NonFiniteFeaturesError":
        """The same error naming the image ``name`` (e.g. its file, known to the caller only)."""
        return NonFiniteFeaturesError(name, self.layer, self.image_key, self.n_more)


def check_finite_maps(feats: dict[int, torch.Tensor], names: Sequence[str],
                      keys: Sequence[str] | None = None) -> None:
    """Raise :class:`NonFiniteFeaturesError` naming the first image whose map of some up-block is not finite.

    Shape:
        ``feats``: ``{l: (B, C, h, w)}``; ``names`` / ``keys``: the B images' names and content keys.
    """
    for l, x in feats.items():
        if not bool(torch.isfinite(x).all()):  # one sync per level; the offending images are looked for only now
            bad = [i for i in range(x.shape[0]) if not bool(torch.isfinite(x[i]).all())]
            raise NonFiniteFeaturesError(names[bad[0]], l, keys[bad[0]] if keys is not None else None, len(bad) - 1)


def preprocess(image: Image.Image, img_size: int = 768) -> torch.Tensor:
    """PIL image → ``(3, img_size, img_size)`` float32 in [-1, 1] (bilinear resize, RGB)."""
    img = image.convert("RGB").resize((img_size, img_size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x * 2.0 - 1.0).contiguous()  # one fixed layout: conv results on CPU depend on it


def image_key(image: Image.Image) -> str:
    """Content hash of an image (mode, size and pixels): mirrored or edited images get other keys."""
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:24]


def _seed_for(seed: int, key: str, stream: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}:{key}".encode()).digest()[:8], "little") >> 1


def add_noise(z0: torch.Tensor, noise: torch.Tensor, timestep: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt(ᾱ_t)·z0 + sqrt(1 − ᾱ_t)·ε``.

    Shape:
        ``z0``, ``noise``: ``(B, 4, h, w)``; returns the same.
    """
    a = alphas_cumprod[timestep].to(torch.float32)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def unet_readout(unet: torch.nn.Module, z_t: torch.Tensor, timestep: int, cond: torch.Tensor,
                 layers: Sequence[int] = (1,), early_exit: bool = True) -> dict[int, torch.Tensor]:
    """Run the UNet on noised latents and return the outputs of ``up_blocks[l]`` for each ``l`` in ``layers``.

    Differentiable (no ``no_grad`` here): training back-propagates through it into ``cond``. ``early_exit``: stop
    after the deepest requested block.

    Shape:
        ``z_t``: ``(B, 4, h, w)``; ``cond``: ``(B, 77, D)`` or ``(1, 77, D)``; returns ``{l: (B, C_l, h_l, w_l)}``
        in the UNet's dtype.
    """
    layers = sorted(set(int(l) for l in layers))
    if not layers or any(l not in UP_BLOCKS for l in layers):
        raise ValueError(f"layers must be a non-empty subset of {UP_BLOCKS}, got {layers}")
    if cond.shape[0] == 1 and z_t.shape[0] > 1:
        cond = cond.expand(z_t.shape[0], -1, -1)
    out: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(_module, _inputs, output):
            out[index] = output
            if early_exit and index == layers[-1]:
                raise _StopForward

        return hook

    handles = [unet.up_blocks[l].register_forward_hook(make_hook(l)) for l in layers]
    t = torch.full((z_t.shape[0],), timestep, device=z_t.device, dtype=torch.long)
    try:
        unet(z_t, t, encoder_hidden_states=cond, return_dict=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return out


def feature_shapes(sd, img_size: int) -> dict[int, tuple[int, int, int]]:
    """``{l: (C, h, w)}`` of each up-block's output at ``img_size`` (the levels a model can return)."""
    chans = list(reversed(sd.unet.config.block_out_channels))
    sizes = [img_size // sd.vae_scale // 2 ** max(len(chans) - 2 - i, 0) for i in UP_BLOCKS]
    return {i: (chans[i], sizes[i], sizes[i]) for i in UP_BLOCKS}


def _check_timestep(sd, timestep: int) -> None:
    if not 0 <= timestep < len(sd.alphas_cumprod):
        raise ValueError(f"timestep must be in [0, {len(sd.alphas_cumprod) - 1}], got {timestep}")


class FeatureExtractor:
    """Batched, seeded, no-grad extraction of up-block features for a list of images.

    Args:
        sd: a loaded :class:`~sd4match_utils.models.SDModel`.
        layers: up-blocks to return (SD4Match reads 1).
        timestep: diffusion step t (50 at test, 261 in training).
        ensemble: E noise copies averaged (8 at test).
        latent: ``"sample"`` (paper) or ``"mean"`` of the VAE posterior.
        img_size: square resize resolution; default the model's native one (768 for SD 2-1, the paper's).
        seed: base seed; per-image randomness is derived from it and the image content.
        batch_size: rows per UNet call: each image's E noise copies are chunked to this (images are never mixed).
        cache_dir: optional folder for latents and features (safetensors, keyed by content and settings).
    """

    def __init__(self, sd, layers: Sequence[int] = (1,), timestep: int = 50, ensemble: int = 8,
                 latent: str = "sample", img_size: int | None = None, seed: int = 0, batch_size: int = 8,
                 cache_dir: str | Path | None = None, early_exit: bool = True):
        if latent not in LATENT_MODES:
            raise ValueError(f"latent must be one of {LATENT_MODES}, got {latent!r}")
        for name, value in (("ensemble", ensemble), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        _check_timestep(sd, timestep)
        img_size = sd.native_img_size if img_size is None else int(img_size)
        if img_size % (sd.vae_scale * 8):
            raise ValueError(f"img_size must be a multiple of {sd.vae_scale * 8}, got {img_size}")
        self.sd = sd
        self.layers = tuple(sorted(set(int(l) for l in layers)))
        if any(l not in UP_BLOCKS for l in self.layers):
            raise ValueError(f"layers must be a subset of {UP_BLOCKS}, got {layers}")
        self.timestep, self.ensemble, self.latent, self.img_size = int(timestep), int(ensemble), latent, int(img_size)
        self.seed, self.batch_size, self.early_exit = int(seed), int(batch_size), early_exit
        self.cache = TensorCache(cache_dir) if cache_dir else None
        self._latents: dict[str, torch.Tensor] = {}
        self.extracted = 0  # images whose features this extractor computed (cache hits not counted)

    def at(self, timestep: int) -> "FeatureExtractor":
        """The same extractor at another diffusion step, sharing this one's latents (they do not depend on ``t``)
        and cache: a timestep sweep runs each image through the VAE once."""
        _check_timestep(self.sd, timestep)
        other = copy.copy(self)
        other.timestep = int(timestep)
        return other

    def settings(self) -> dict:
        """Everything that changes the features (recorded in result files and cache keys)."""
        return {"model_fingerprint": self.sd.identity["fingerprint"], "precision": self.sd.identity.get("precision"),
                "layers": list(self.layers), "timestep": self.timestep, "ensemble": self.ensemble,
                "latent": self.latent, "img_size": self.img_size, "seed": self.seed}

    def _latent_key(self, ikey: str) -> str:
        s = self.settings()
        parts = [s["model_fingerprint"], s["precision"], s["latent"], s["img_size"], s["seed"], ikey,
                 _EXTRACTION_VERSION]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]

    def _feature_key(self, ikey: str, ckey: str) -> str:
        parts = [self._latent_key(ikey), self.timestep, self.ensemble, self.layers, ckey]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]

    @torch.no_grad()
    def latents(self, images: Sequence[Image.Image], keys: Sequence[str] | None = None) -> torch.Tensor:
        """VAE latents ``z_0`` (× scaling factor), one VAE pass per image: ``(B, 4, S/8, S/8)`` float32 on device.
        ``keys``: the images' :func:`image_key` when the caller has them already."""
        keys = [image_key(im) for im in images] if keys is None else list(keys)
        vae = self.sd.vae
        for im, key in zip(images, keys):
            lk = self._latent_key(key)
            if lk in self._latents:
                continue
            hit = self.cache.get("latents", lk) if self.cache is not None else None
            if hit is not None:
                self._latents[lk] = hit["z0"]
                continue
            x = preprocess(im, self.img_size)[None].to(self.sd.device, self.sd.dtype)
            dist = vae.encode(x.contiguous(memory_format=self.sd.vae_memory_format)).latent_dist
            z = dist.mean.float()[0]
            if self.latent == "sample":
                g = torch.Generator().manual_seed(_seed_for(self.seed, key, "latent"))
                z = z + dist.std.float()[0] * torch.randn(z.shape, generator=g).to(z.device)
            self._latents[lk] = z = (z * vae.config.scaling_factor).cpu()
            if self.cache is not None:
                self.cache.put("latents", lk, {"z0": z}, {"settings": self.settings(), "image": key})
        return torch.stack([self._latents[self._latent_key(k)] for k in keys]).to(self.sd.device)

    def noise(self, images_keys: Sequence[str], shape: tuple[int, ...]) -> torch.Tensor:
        """``(B, E, *shape)`` ensemble noise, drawn per image from ``(seed, image content)`` on the CPU."""
        gens = [torch.Generator().manual_seed(_seed_for(self.seed, k, "noise")) for k in images_keys]
        return torch.stack([torch.randn((self.ensemble, *shape), generator=g) for g in gens])

    @torch.no_grad()
    def features_from_latents(self, z0: torch.Tensor, cond: torch.Tensor, image_keys: Sequence[str],
                              names: Sequence[str] | None = None) -> dict[int, torch.Tensor]:
        """Noise each latent E times, run the UNet on each image's E copies (chunks of ``batch_size`` rows, never
        two images in one call), average over E. ``image_keys`` seed the noise; ``names`` name the images in errors
        (default: their content keys).

        Shape:
            ``z0``: ``(B, 4, h, w)``; ``cond``: ``(1, 77, D)`` or ``(B, 77, D)``; returns
            ``{l: (B, C_l, h_l, w_l)}`` float32 on the model's device.

        Raises:
            NonFiniteFeaturesError: a map holds NaN or Inf.
        """
        noise = self.noise(image_keys, tuple(z0.shape[1:])).to(z0.device)
        z_t = add_noise(z0[:, None].float(), noise, self.timestep, self.sd.alphas_cumprod).contiguous()  # (B, E, ..)
        cond = cond.to(self.sd.device, self.sd.dtype)
        per_image: dict[int, list[torch.Tensor]] = {l: [] for l in self.layers}
        for j in range(z0.shape[0]):
            cond_j = cond[j : j + 1] if cond.shape[0] > 1 else cond[:1]
            chunks = []
            for s in range(0, self.ensemble, self.batch_size):
                rows = z_t[j, s : s + self.batch_size].to(self.sd.dtype).contiguous()
                out = unet_readout(self.sd.unet, rows, self.timestep, cond_j.expand(rows.shape[0], -1, -1).contiguous(),
                                   self.layers, self.early_exit)
                chunks.append({l: out[l].float() for l in self.layers})
            for l in self.layers:
                per_image[l].append(torch.cat([c[l] for c in chunks]).mean(dim=0))
        feats = {l: torch.stack(per_image[l]) for l in self.layers}
        names = list(names) if names is not None else [f"with content key {k}" for k in image_keys]
        check_finite_maps(feats, names, list(image_keys))
        return feats

    def __call__(self, images: Sequence[Image.Image], cond: torch.Tensor,
                 names: Sequence[str] | None = None) -> dict[int, torch.Tensor]:
        """Features of ``images`` under conditioning ``cond``, through the on-disk cache when there is one. ``names``
        (e.g. file paths) name the images in errors; non-finite maps are never written to the cache.

        Shape:
            ``cond``: ``(1, 77, D)`` or ``(B, 77, D)``; returns ``{l: (B, C_l, h_l, w_l)}`` float32 on the model's
            device.

        Raises:
            NonFiniteFeaturesError: a map (computed or read from the cache) holds NaN or Inf.
        """
        keys = [image_key(im) for im in images]
        names = list(names) if names is not None else [f"with content key {k}" for k in keys]
        per_image = cond.shape[0] == len(images) and len(images) > 1
        ckeys = [tensor_key(c) for c in cond.split(1)] if per_image else [tensor_key(cond[:1])] * len(images)
        fkeys = [self._feature_key(k, c) for k, c in zip(keys, ckeys)]
        result = [self.cache.get("features", fk) if self.cache is not None else None for fk in fkeys]
        hits = [i for i, r in enumerate(result) if r is not None]
        todo = [i for i, r in enumerate(result) if r is None]
        if todo:
            self.extracted += len(todo)
            z0 = self.latents([images[i] for i in todo], [keys[i] for i in todo])
            c = cond[todo] if per_image else cond[:1]
            feats = self.features_from_latents(z0, c, [keys[i] for i in todo], [names[i] for i in todo])
            for j, i in enumerate(todo):
                result[i] = {f"up{l}": feats[l][j].cpu() for l in self.layers}
                if self.cache is not None:
                    meta = {"settings": self.settings(), "image": keys[i], "conditioning": ckeys[i]}
                    self.cache.put("features", fkeys[i], result[i], meta)
        out = {l: torch.stack([r[f"up{l}"] for r in result]).to(self.sd.device) for l in self.layers}
        if hits:  # maps of a cache written before this check existed
            check_finite_maps({l: out[l][hits] for l in self.layers}, [names[i] for i in hits], [keys[i] for i in hits])
        return out
