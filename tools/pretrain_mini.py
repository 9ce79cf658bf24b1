"""The trained embedded model ``mini``: its architecture, its pre-training, and where its weights ship.

``mini`` has Stable Diffusion 2-1's topology at a small width (UNet 4 down / 4 up blocks with cross-attention in
``up_blocks[1..3]``, v-prediction with SD 2-1's scheduler, a ×8 VAE, a CLIP text encoder with a causal mask) and
a small DINOv2-shaped ViT for the conditional prompting module. It is trained from scratch on images drawn by
the synthetic generator (streams that no written split uses), so everything a laptop shows comes from a model
that has learned something, not from random weights.

Pre-training (``sd4match pretrain-mini``) runs four stages, each with a share of the budget (``--steps`` or
``--minutes``):

1. ``vae``: the autoencoder (reconstruction L1 + L2 and a small KL term) on crops of the training images;
   ``scaling_factor`` is then measured so that scaled latents have unit variance (as SD chose 0.18215).
2. ``unet_low`` / ``unet``: UNet and text encoder jointly with SD 2-1's objective (v-prediction, scaled-linear
   betas, uniform timesteps), first at half the native size, then at the native size. Captions are composed
   from what the generator knows of each instance (category, colour, texture, orientation, size, background,
   truncation, occlusion) with several templates, phrases dropped at random, ``"a photo of a {category}"``
   among them and 10 % empty captions, so text (and a learned prompt) has something to steer.
3. ``dino``: the ViT, supervised by the generator's labels (category, orientation, texture, colour of the
   object) from its mean patch token: an honest, cheap objective that makes its patch features describe the
   object, which is what the CPM reads.
4. ``select``: the read-out layer and timestep with the best kernel-softmax PCK@0.1 on held-out pairs (their own
   random stream) are written to ``sd4match.json`` as the model's recommended settings.

Every stage draws its data and noise from ``(seed, stage, step)``, checkpoints atomically, and ``--resume``
continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sd4match_utils.cache import atomic_save_tensors, atomic_write_json
from sd4match_utils.models import MINI_DIR
from sd4match_utils.data.synthetic import SYNTHETIC_CATEGORIES
from sd4match_utils.tiny import TINY_TEXT_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_WORDS

NATIVE_SIZE = 256
MINI_UNET_CONFIG = dict(TINY_UNET_CONFIG, sample_size=NATIVE_SIZE // 8, layers_per_block=1)
MINI_VAE_CONFIG = dict(TINY_VAE_CONFIG, block_out_channels=(16, 32, 64, 64), sample_size=NATIVE_SIZE)
MINI_TEXT_CONFIG = dict(TINY_TEXT_CONFIG)
MINI_DINO_CONFIG = dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, patch_size=14,
                        image_size=224, layerscale_value=1.0)
TEXTURE_WORDS = {"solid": "plain", "stripes": "striped", "dots": "dotted", "checks": "checked", "noise": "speckled"}
COLOURS = ("dark", "grey", "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
ORIENTATIONS = ("upright", "tilted left", "tilted right")
MINI_WORDS = TINY_WORDS + (
    "boat chair aeroplane pottedplant small medium large plain cluttered background frame cut off partly hidden",
    " ".join(COLOURS), " ".join(TEXTURE_WORDS.values()), "upright tilted", "is shown seen photographed picture",
)
#: Stages and their share of the budget.
STAGES = (("vae", 0.15), ("unet_low", 0.40), ("unet", 0.32), ("dino", 0.09), ("select", 0.04))
POOL_SIZE = 4000
HELD_OUT = 48


# ---------------------------------------------------------------------------------------------------- captions
def caption(attributes: dict, rng: np.random.Generator) -> str:
    """A caption composed from an instance's attributes: 10 % empty, 25 % ``"a photo of a {category}"``, else
    a random template with each optional phrase kept with probability 1/2."""
    cat = attributes["category"]
    u = rng.random()
    if u < 0.1:
        return ""
    if u < 0.35:
        return f"a photo of a {cat}"
    words = [w for w, keep in ((attributes["size"], rng.random() < 0.4),
                               (TEXTURE_WORDS[attributes["texture"]], rng.random() < 0.5),
                               (attributes["colour"], rng.random() < 0.6)) if keep]
    phrases = [p for p, keep in ((attributes["orientation"], rng.random() < 0.5),
                                 (f"on a {attributes['background']} background", rng.random() < 0.5),
                                 ("cut off by the frame", attributes["truncated"] and rng.random() < 0.7),
                                 ("partly hidden", attributes["occluded"] and rng.random() < 0.7)) if keep]
    head = ["a photo of a", "a picture of a", "a", "the"][int(rng.integers(4))]
    return ", ".join([" ".join([head, *words, cat]), *phrases])


# -------------------------------------------------------------------------------------------------- the images
def render_pool(seed: int, n: int, size: int, start: int = 0, progress: bool = True):
    """``n`` fresh instances (all categories in turn) from the ``pretrain`` stream.

    Returns:
        ``(images (n, 3, size, size) uint8, attributes list)``; images resized to ``size²`` ignoring the aspect
        ratio, like :func:`~sd4match_utils.features.preprocess`.
    """
    from PIL import Image

    from sd4match_utils.data.synthetic import _rng, render_instance

    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    attrs = []
    cats = SYNTHETIC_CATEGORIES
    for j in tqdm(range(n), desc="render", disable=not progress, unit="img"):
        i = start + j
        ci = i % len(cats)
        inst = render_instance(cats[ci], _rng(seed, "pretrain", ci, i // len(cats)))
        img = inst.image.convert("RGB").resize((size, size), Image.BICUBIC)
        images[j] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        attrs.append(inst.attributes)
    return images, attrs


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` → float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in [-1, 1] (peak-to-peak 2)."""
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


# ---------------------------------------------------------------------------------------------------- training
def build_mini_components(seed: int = 0) -> dict:
    """Untrained mini components (UNet, VAE, text encoder, tokenizer, scheduler) and its ViT, from ``seed``."""
    from transformers import Dinov2Config, Dinov2Model

    from sd4match_utils.tiny import build_components

    parts = build_components(MINI_UNET_CONFIG, MINI_VAE_CONFIG, MINI_TEXT_CONFIG, seed, words=MINI_WORDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        parts["dino"] = Dinov2Model(Dinov2Config(**MINI_DINO_CONFIG))
    return parts


class Pretrainer:
    """Runs the stages of :data:`STAGES` with a budget of optimiser steps or minutes; see the module docstring."""

    LR = {"vae": 1e-3, "unet_low": 1e-3, "unet": 5e-4, "dino": 1e-3}
    BATCH = {"vae": 16, "unet_low": 32, "unet": 16, "dino": 32}

    def __init__(self, out: str | Path, steps: int | None = None, minutes: float | None = None, seed: int = 0,
                 device: str = "cpu", progress: bool = True, pool_size: int = POOL_SIZE, command: str = "",
                 selection_pairs: int = 80):
        if (steps is None) == (minutes is None):
            raise ValueError("give exactly one of steps or minutes")
        self.out, self.seed, self.device, self.progress = Path(out), seed, torch.device(device), progress
        self.steps, self.minutes, self.pool_size, self.command = steps, minutes, pool_size, command
        self.selection_pairs = selection_pairs
        self.held_out = min(HELD_OUT, pool_size // 4)  # last pool images: the ViT's held-out accuracy
        self.parts = build_mini_components(seed)
        for name in ("unet", "vae", "text_encoder", "dino"):
            self.parts[name].to(self.device)
        self.state = {"stage": 0, "step": 0, "elapsed": 0.0, "stage_elapsed": 0.0, "log": [], "metrics": {}}
        width = MINI_DINO_CONFIG["hidden_size"]
        with torch.random.fork_rng(devices=[]):  # the ViT's training heads (not exported), from the seed
            torch.manual_seed(seed + 2)
            self.heads = torch.nn.ModuleDict({
                "category": torch.nn.Linear(width, len(SYNTHETIC_CATEGORIES)),
                "orientation": torch.nn.Linear(width, len(ORIENTATIONS)),
                "texture": torch.nn.Linear(width, len(TEXTURE_WORDS)),
                "colour": torch.nn.Linear(width, len(COLOURS)),
            }).to(self.device)
        self.optimizer = None
        self.pool = self.attrs = None
        self.latents: dict[int, torch.Tensor] = {}

    # -- budget ----------------------------------------------------------------------------------------------
    def stage_budget(self, index: int) -> float:
        """Steps (or seconds) of stage ``index``."""
        share = STAGES[index][1]
        return max(1, round(self.steps * share)) if self.steps is not None else self.minutes * 60 * share

    def _stage_done(self) -> bool:
        if self.steps is not None:
            return self.state["step"] >= self.stage_budget(self.state["stage"])
        return self.state["stage_elapsed"] >= self.stage_budget(self.state["stage"])

    # -- modules and optimiser -----------------------------------------------------------------------------
    def _modules(self, stage: str) -> list[torch.nn.Module]:
        p = self.parts
        return {"vae": [p["vae"]], "unet_low": [p["unet"], p["text_encoder"]], "unet": [p["unet"], p["text_encoder"]],
                "dino": [p["dino"], self.heads]}.get(stage, [])

    def _make_optimizer(self, stage: str):
        mods = self._modules(stage)
        if not mods:
            return None
        for m in (self.parts["unet"], self.parts["vae"], self.parts["text_encoder"], self.parts["dino"], self.heads):
            m.requires_grad_(False).eval()
        groups = []
        for m in mods:
            m.requires_grad_(True).train()
            lr = self.LR[stage] * (0.3 if m is self.parts["text_encoder"] else 1.0)
            groups.append({"params": [q for q in m.parameters() if q.requires_grad], "lr": lr})
        return torch.optim.AdamW(groups, weight_decay=0.0 if stage == "vae" else 0.01)

    def _lr_factor(self) -> float:
        """Linear warm-up over the first 5 % of a stage, then cosine decay to 10 %."""
        frac = (self.state["step"] / self.stage_budget(self.state["stage"]) if self.steps is not None
                else self.state["stage_elapsed"] / self.stage_budget(self.state["stage"]))
        frac = min(max(frac, 0.0), 1.0)
        if frac < 0.05:
            return max(frac / 0.05, 0.02)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (frac - 0.05) / 0.95))

    # -- data --------------------------------------------------------------------------------------------------
    def _ensure_pool(self) -> None:
        if self.pool is None:
            self.pool, self.attrs = render_pool(self.seed, self.pool_size, NATIVE_SIZE, progress=self.progress)

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 77, self.state["stage"], step])

    def _gen(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self._rng(step).integers(2**62)))

    @torch.no_grad()
    def _encode_pool(self, size: int) -> torch.Tensor:
        """``(N, 8, size/8, size/8)`` posterior mean and std of every pool image at ``size``."""
        if size not in self.latents:
            vae = self.parts["vae"].eval()
            out = []
            for i in tqdm(range(0, len(self.pool), 64), desc=f"encode {size}", disable=not self.progress):
                x = _to_unit(self.pool[i:i + 64]).to(self.device)
                if size != NATIVE_SIZE:
                    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                d = vae.encode(x).latent_dist
                out.append(torch.cat([d.mean, d.std], dim=1).cpu())
            self.latents[size] = torch.cat(out)
        return self.latents[size]

    # -- one step per stage -----------------------------------------------------------------------------------
    def _vae_step(self, step: int) -> float:
        rng = self._rng(step)
        idx = rng.integers(len(self.pool), size=self.BATCH["vae"])
        crop = 64
        xs = []
        for i in idx:
            y0, x0 = rng.integers(0, NATIVE_SIZE - crop + 1, size=2)
            xs.append(self.pool[i, :, y0:y0 + crop, x0:x0 + crop])
        x = _to_unit(torch.stack(xs)).to(self.device)
        vae = self.parts["vae"]
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=self._gen(step)).to(self.device)
            rec = vae.decode(z).sample.float()
        kl = 0.5 * (post.mean.float().pow(2) + post.var.float() - 1.0 - post.logvar.float()).mean()
        return (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * kl

    def _captions_ids(self, idx, rng) -> torch.Tensor:
        tok = self.parts["tokenizer"]
        texts = [caption(self.attrs[i], rng) for i in idx]
        return tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    def _unet_step(self, step: int, size: int) -> float:
        rng = self._rng(step)
        idx = rng.integers(len(self.pool), size=self.BATCH[STAGES[self.state["stage"]][0]])
        stats = self._encode_pool(size)[torch.as_tensor(idx)]
        g = self._gen(step)
        mean, std = stats.chunk(2, dim=1)
        scale = self.parts["vae"].config.scaling_factor
        z0 = (mean + std * torch.randn(mean.shape, generator=g)) * scale
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        ac = self.parts["scheduler"].alphas_cumprod[t].view(-1, 1, 1, 1).float()
        zt = ac.sqrt() * z0 + (1 - ac).sqrt() * eps
        target = ac.sqrt() * eps - (1 - ac).sqrt() * z0
        ids = self._captions_ids(idx, rng)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            cond = self.parts["text_encoder"](ids.to(self.device)).last_hidden_state
            v = self.parts["unet"](zt.to(self.device), t.to(self.device), cond).sample
        return F.mse_loss(v.float(), target.to(self.device))

    def _dino_inputs(self, idx) -> torch.Tensor:
        from sd4match_utils.dino import IMAGENET_MEAN, IMAGENET_STD

        x = self.pool[torch.as_tensor(idx)].float() / 255.0
        off = (NATIVE_SIZE - 224) // 2
        x = x[:, :, off:off + 224, off:off + 224]
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x.to(self.device)

    def _dino_labels(self, idx) -> dict[str, torch.Tensor]:
        values = {"category": SYNTHETIC_CATEGORIES, "orientation": ORIENTATIONS, "texture": tuple(TEXTURE_WORDS),
                  "colour": COLOURS}
        return {k: torch.tensor([v.index(self.attrs[i][k]) for i in idx], device=self.device)
                for k, v in values.items()}

    def _dino_step(self, step: int) -> float:
        rng = self._rng(step)
        idx = rng.integers(len(self.pool) - self.held_out, size=self.BATCH["dino"])
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            h = self.parts["dino"](pixel_values=self._dino_inputs(idx)).last_hidden_state[:, 1:].mean(dim=1)
        labels = self._dino_labels(idx)
        return sum(F.cross_entropy(self.heads[k](h.float()), y) for k, y in labels.items())

    # -- evaluation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def vae_psnr(self, n: int = HELD_OUT) -> float:
        """PSNR of posterior-mean reconstructions of ``n`` held-out instances (indices past the pool)."""
        images, _ = render_pool(self.seed, n, NATIVE_SIZE, start=10**6, progress=False)
        x = _to_unit(images).to(self.device)
        vae = self.parts["vae"].eval()
        return psnr(vae.decode(vae.encode(x).latent_dist.mean).sample, x)

    @torch.no_grad()
    def dino_accuracy(self) -> float:
        idx = list(range(len(self.pool) - self.held_out, len(self.pool)))
        h = self.parts["dino"].eval()(pixel_values=self._dino_inputs(idx)).last_hidden_state[:, 1:].mean(dim=1)
        return float((self.heads["category"](h).argmax(1) == self._dino_labels(idx)["category"]).float().mean())

    @torch.no_grad()
    def _calibrate_scaling(self) -> None:
        """``scaling_factor = 1 / std`` of posterior means over 512 pool images (as SD measured 0.18215)."""
        vae = self.parts["vae"].eval()
        x = _to_unit(self.pool[:512]).to(self.device)
        means = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
        vae.register_to_config(scaling_factor=round(1.0 / means.std().item(), 5))

    def select(self) -> dict:
        """Choose the read-out layer and timestep on held-out pairs; returns the table of PCK values."""
        import tempfile

        from sd4match_utils.data import load_dataset
        from sd4match_utils.data.synthetic import generate_spair
        from sd4match_utils.conditioning import make_conditioning
        from sd4match_utils.evaluate import predict
        from sd4match_utils.features import FeatureExtractor
        from sd4match_utils.metrics import pck_records

        sd = self.sd_model()
        table = []
        with tempfile.TemporaryDirectory() as tmp:
            root = generate_spair(tmp, seed=self.seed, pairs_per_split={"trn": 0, "val": 0, "test": self.selection_pairs},
                                  stream="selection")
            ds = load_dataset("spair", root, "test", img_size=NATIVE_SIZE)
            cond = make_conditioning(sd, "text")
            for t in (25, 50, 100, 200, 400):
                ex = FeatureExtractor(sd, layers=(1, 2, 3), timestep=t, ensemble=2, img_size=NATIVE_SIZE,
                                      seed=self.seed)
                preds = predict(ds, ex, cond, ["kernel_softmax"], layer=(1, 2, 3), progress=False)  # one pass
                for layer, df in preds.groupby("layer"):
                    rec = [r for r in pck_records(df, alphas=(0.1,), spaces=("resized",), img_size=NATIVE_SIZE)
                           if r["averaging"] == "per_image" and r["category"] == "all"][0]
                    table.append({"layer": int(layer), "timestep": t, "pck": rec["pck"]})
        best = max(table, key=lambda r: r["pck"])
        return {"table": table, "layer": best["layer"], "timestep": best["timestep"], "pck": best["pck"]}

    def sd_model(self):
        from sd4match_utils.models import SDModel

        p = self.parts
        for m in (p["unet"], p["vae"], p["text_encoder"]):
            m.eval().requires_grad_(False)
        return SDModel(unet=p["unet"], vae=p["vae"], text_encoder=p["text_encoder"], tokenizer=p["tokenizer"],
                       scheduler=p["scheduler"], identity={"model": "mini (pre-training)", "source": "memory",
                                                           "fingerprint": "pretraining"})

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _ckpt(self) -> Path:
        return self.out / "checkpoint.safetensors"

    def save_checkpoint(self) -> None:
        tensors = {}
        for name in ("unet", "vae", "text_encoder", "dino"):
            tensors.update({f"{name}.{k}": v for k, v in self.parts[name].state_dict().items()})
        tensors.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})
        if self.optimizer is not None:
            for i, st in self.optimizer.state_dict()["state"].items():
                for k, v in st.items():
                    tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).reshape(-1) if k == "step" else v
        meta = {"state": self.state, "scaling_factor": self.parts["vae"].config.scaling_factor,
                "seed": self.seed, "steps": self.steps, "minutes": self.minutes, "pool_size": self.pool_size}
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(self._ckpt(), tensors, meta)

    def load_checkpoint(self) -> bool:
        from safetensors import safe_open

        if not self._ckpt().is_file():
            return False
        with safe_open(str(self._ckpt()), "pt") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for key in ("seed", "steps", "minutes", "pool_size"):
            if meta[key] != getattr(self, key):
                raise ValueError(f"{self._ckpt()}: cannot resume, {key} was {meta[key]}, now {getattr(self, key)}")
        for name in ("unet", "vae", "text_encoder", "dino", "heads"):
            module = self.heads if name == "heads" else self.parts[name]
            module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        self.parts["vae"].register_to_config(scaling_factor=meta["scaling_factor"])
        self.state = meta["state"]
        stage = STAGES[self.state["stage"]][0] if self.state["stage"] < len(STAGES) else None
        self.optimizer = self._make_optimizer(stage) if stage else None
        opt_state = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
        if self.optimizer is not None and opt_state:
            self.optimizer.load_state_dict({"state": opt_state,
                                            "param_groups": self.optimizer.state_dict()["param_groups"]})
        return True

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        if self._ckpt().is_file() and not resume:
            raise FileExistsError(f"{self.out} already holds a pre-training run: pass --resume to continue it")
        if not (resume and self.load_checkpoint()):
            self.optimizer = self._make_optimizer(STAGES[0][0])
        self.out.mkdir(parents=True, exist_ok=True)
        self._ensure_pool()
        last_save = time.time()
        while self.state["stage"] < len(STAGES):
            name = STAGES[self.state["stage"]][0]
            if name == "select":
                self.state["metrics"]["selection"] = self.select()
                self._next_stage()
                self.save_checkpoint()
                continue
            total = self.stage_budget(self.state["stage"])
            bar = tqdm(total=total if self.steps is not None else round(total), initial=self.state["step"]
                       if self.steps is not None else round(self.state["stage_elapsed"]), desc=name,
                       disable=not self.progress, unit="step" if self.steps is not None else "s")
            if name == "unet":
                self._encode_pool(NATIVE_SIZE)
            elif name == "unet_low":
                self._encode_pool(NATIVE_SIZE // 2)
            while not self._stage_done():
                t0 = time.time()
                for group, base in zip(self.optimizer.param_groups, self._base_lrs(name)):
                    group["lr"] = base * self._lr_factor()
                loss = {"vae": self._vae_step, "dino": self._dino_step}.get(name)
                loss = loss(self.state["step"]) if loss else self._unet_step(
                    self.state["step"], NATIVE_SIZE // 2 if name == "unet_low" else NATIVE_SIZE)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([q for g in self.optimizer.param_groups for q in g["params"]], 1.0)
                self.optimizer.step()
                dt = time.time() - t0
                self.state["step"] += 1
                self.state["elapsed"] += dt
                self.state["stage_elapsed"] += dt
                if self.state["step"] % 10 == 0 or self._stage_done():
                    self.state["log"].append([name, self.state["step"], round(loss.item(), 5),
                                              round(self.state["elapsed"], 1)])
                bar.update(1 if self.steps is not None else round(dt, 3))
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if time.time() - last_save > 120:
                    self.save_checkpoint()
                    last_save = time.time()
            bar.close()
            self._finish_stage(name)
            self._next_stage()
            self.save_checkpoint()
            last_save = time.time()
        return self.export(self.out / "model")

    def _base_lrs(self, stage: str) -> list[float]:
        return [self.LR[stage] * (0.3 if m is self.parts["text_encoder"] else 1.0) for m in self._modules(stage)]

    def _finish_stage(self, name: str) -> None:
        if name == "vae":
            self._calibrate_scaling()
            self.latents.clear()
            self.state["metrics"]["vae_psnr_db"] = round(self.vae_psnr(), 2)
        elif name == "dino":
            self.state["metrics"]["dino_category_accuracy"] = round(self.dino_accuracy(), 3)
        if self.progress:
            print(f"[pretrain-mini] {name} done: {json.dumps(self.state['metrics'], default=str)[:300]}")

    def _next_stage(self) -> None:
        self.state["stage"] += 1
        self.state["step"] = 0
        self.state["stage_elapsed"] = 0.0
        stage = STAGES[self.state["stage"]][0] if self.state["stage"] < len(STAGES) else None
        self.optimizer = self._make_optimizer(stage) if stage else None

    # -- export ------------------------------------------------------------------------------------------------
    def export(self, folder: Path, dtype: torch.dtype = torch.float32) -> dict:
        """Write the diffusers folder (+ ``dino/``, ``sd4match.json``, ``training.json``) atomically."""
        from sd4match_utils import __version__

        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        sd = self.sd_model()
        for name in ("unet", "vae", "text_encoder"):
            getattr(sd, name).to(dtype)
        sd.save_pretrained(tmp)
        dino = self.parts["dino"].eval().requires_grad_(False).to(dtype)
        dino.save_pretrained(tmp / "dino")
        for m in (sd.unet, sd.vae, sd.text_encoder, dino):
            m.float()
        sel = self.state["metrics"].get("selection", {"layer": 2, "timestep": 50})
        atomic_write_json(tmp / "sd4match.json", {"name": "mini", "native_img_size": NATIVE_SIZE,
                                                  "recommended_layer": sel["layer"],
                                                  "recommended_timestep": sel["timestep"],
                                                  "recommended_train_timestep": 261, "dino": "dino"})
        training = {"command": self.command, "seed": self.seed, "steps": self.steps, "minutes": self.minutes,
                    "stages": [dict(name=n, share=s) for n, s in STAGES], "pool_size": self.pool_size,
                    "wall_seconds": round(self.state["elapsed"], 1), "metrics": self.state["metrics"],
                    "log_columns": ["stage", "step", "loss", "seconds"], "log": self.state["log"],
                    "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "threads": torch.get_num_threads(), "device": str(self.device)},
                    "versions": _versions(__version__), "date": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        atomic_write_json(tmp / "training.json", training)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return training


def ship(model_dir: str | Path, dest: str | Path = MINI_DIR) -> Path:
    """Copy a pre-trained model folder to ``dest`` (the package's ``weights/mini``) with its weights in fp16.

    The copy is built beside ``dest`` and renamed into place, so an interrupted ship never leaves half a model.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_dir, dest = Path(model_dir), Path(dest)
    if not (model_dir / "sd4match.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a pre-trained mini model folder (no sd4match.json)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
    for src in model_dir.rglob("*.safetensors"):
        with safe_open(str(src), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, str(tmp / src.relative_to(model_dir)), metadata=meta)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _versions(package_version: str) -> dict:
    import diffusers
    import transformers

    return {"sd4match": package_version, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def pretrain_mini(out, steps=None, minutes=None, seed=0, device="cpu", resume=False, progress=True,
                  pool_size=POOL_SIZE, command="", selection_pairs=80) -> dict:
    """Run (or continue) pre-training into ``out``; the model lands in ``out/model``. Returns ``training.json``."""
    return Pretrainer(out, steps=steps, minutes=minutes, seed=seed, device=device, progress=progress,
                      pool_size=pool_size, command=command, selection_pairs=selection_pairs).run(resume=resume)
