"""CPM — the conditional prompting module (SPEC §4): part of the prompt is computed from the image pair.

Prompt rows ``[global (1, G, D) | conditional (B, C, D)]`` are framed and encoded like a learned prompt; both
images of a pair get the same conditioning. The conditional branch (the paper's "Pair / DINO / Feat") maps DINOv2
patch features ``(B, N, c)`` through :meth:`ConditionalPrompt.conditional_tokens`. Ablations: ``n_global`` /
``n_cond``, ``mode="image"`` (source features only) and ``features="pooled"`` ("Head": each image's mean patch
token, repeated N times so that every parameter shape stays as in "Feat"). Attribute names equal the official
``ckpt.pt`` keys (:data:`CPM_KEYS`). The frozen DINOv2 is attached as ``prompt.dino``, never saved nor trained.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..dino import DinoFeatures
from ..features import image_key
from ..models import same_weights
from .files import CPM_KEYS, read_prompt_file, write_prompt_file
from .text import N_PROMPT_TOKENS, encode_rows

CPM_MODES = ("pair", "image")
CPM_FEATURES = ("patch", "pooled")


def cpm_shapes(text_dim: int, dino_dim: int, n_global: int = 25, n_cond: int = 50, mode: str = "pair",
               n_patches: int = 256) -> dict[str, tuple[int, ...]]:
    """The shape of every CPM tensor (by ``state_dict`` key) for a text width D and a DINOv2 width c."""
    c_in = dino_dim * (2 if mode == "pair" else 1)
    return {"global_embeds": (1, n_global, text_dim), "positional_embedding": (1, n_cond, text_dim),
            "alpha_cond": (1, n_cond, text_dim), "linear_C.weight": (text_dim, c_in), "linear_C.bias": (text_dim,),
            "linear_N.weight": (n_patches, n_patches), "linear_N.bias": (n_patches,)}


class ConditionalPrompt(torch.nn.Module):
    """The conditional prompting module, a Conditioning.

    ``text_dim`` D and ``dino_dim`` c are the widths, ``n_global`` / ``n_cond`` G and C (G + C ≤ 75), ``n_patches``
    N; ``mode`` ``"pair"`` (the paper) or ``"image"`` (source only); ``features`` ``"patch"`` ("Feat") or
    ``"pooled"`` ("Head"); ``lr_linear`` the linears' learning rate. ``seed`` draws, leaving the global RNG
    untouched, the three embeddings ~ U[0, 1), then ``linear_C`` (2c or c → D) and ``linear_N`` (N → N).
    """

    pair_dependent = True
    kind = "cpm"

    def __init__(self, text_dim: int, dino_dim: int, n_global: int = 25, n_cond: int = 50, mode: str = "pair",
                 features: str = "patch", n_patches: int = 256, lr_linear: float = 1e-3, seed: int = 0):
        super().__init__()
        if mode not in CPM_MODES:
            raise ValueError(f"CPM mode must be one of {CPM_MODES}, got {mode!r}")
        if features not in CPM_FEATURES:
            raise ValueError(f"CPM features must be one of {CPM_FEATURES}, got {features!r}")
        if n_global < 0 or n_cond < 1 or n_global + n_cond > N_PROMPT_TOKENS:
            raise ValueError(f"need n_global >= 0, n_cond >= 1 and n_global + n_cond <= {N_PROMPT_TOKENS}, "
                             f"got n_global={n_global}, n_cond={n_cond}")
        self.n_global, self.n_cond, self.mode, self.features = int(n_global), int(n_cond), mode, features
        self.n_patches, self.lr_linear, self.seed = int(n_patches), float(lr_linear), int(seed)
        self.text_dim, self.dino_dim = int(text_dim), int(dino_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.global_embeds = torch.nn.Parameter(torch.rand(1, n_global, text_dim))
            self.positional_embedding = torch.nn.Parameter(torch.rand(1, n_cond, text_dim))
            self.alpha_cond = torch.nn.Parameter(torch.rand(1, n_cond, text_dim))
            self.linear_C = torch.nn.Linear(dino_dim * (2 if mode == "pair" else 1), text_dim)
            self.linear_N = torch.nn.Linear(n_patches, n_patches)
        self._dino = None
        self.dino_info: dict = {}  # identity of the DINOv2 (recorded in files), known even before it is loaded
        self._dino_loader = None  # builds the DINOv2 on first use (prompts loaded from files)

    @property
    def dino(self):
        """The attached :class:`~sd4match_utils.dino.DinoFeatures` (built on first use for a loaded prompt)."""
        if self._dino is None and self._dino_loader is not None:
            self.dino = self._dino_loader()  # a failure (no weights, other DINOv2) repeats on the next use
            self._dino_loader = None
        return self._dino

    @dino.setter
    def dino(self, features) -> None:
        if features is not None:
            if features.dim != self.dino_dim or features.n_patches != self.n_patches:
                raise ValueError(f"DINOv2 {features.spec!r} gives ({features.n_patches}, {features.dim}) patch "
                                 f"features but this CPM expects ({self.n_patches}, {self.dino_dim})")
            self.dino_info = features.describe()
        self._dino = features

    @classmethod
    def initialise(cls, sd, dino, n_global: int = 25, n_cond: int = 50, mode: str = "pair", features: str = "patch",
                   lr_linear: float = 1e-3, seed: int = 0) -> "ConditionalPrompt":
        """A new CPM for model ``sd`` and the DINOv2 ``dino`` (attached), on the model's device."""
        prompt = cls(sd.text_dim, dino.dim, n_global, n_cond, mode, features, dino.n_patches, lr_linear, seed)
        prompt.dino = dino
        return prompt.to(sd.device)

    def branch_input(self, src_feats: torch.Tensor, trg_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Step 1: source and target features concatenated along channels, source first (``"pooled"``: each
        image's mean token, repeated N times); in the parameters' dtype and device.

        Shape: ``src_feats, trg_feats (B, N, c)`` → ``(B, N, 2c)`` (pair) or ``(B, N, c)`` (image).
        """
        feats = [src_feats] if self.mode == "image" else [src_feats, trg_feats]
        if any(f is None for f in feats):
            raise ValueError("CPM in 'pair' mode needs source and target features")
        if self.features == "pooled":
            feats = [f.mean(dim=1, keepdim=True).expand(-1, f.shape[1], -1) for f in feats]
        return torch.cat(feats, dim=2).to(device=self.global_embeds.device, dtype=self.global_embeds.dtype)

    def conditional_tokens(self, src_feats: torch.Tensor, trg_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Steps 1–5: the C conditional tokens.

        Shape: ``src_feats, trg_feats (B, N, c)`` → ``(B, C, D)``.
        """
        x = self.linear_C(self.branch_input(src_feats, trg_feats))  # 2: (B, N, D)
        x = self.linear_N(x.transpose(1, 2))  # 3: (B, D, N), linear over the patch axis
        x = F.adaptive_max_pool1d(x, self.n_cond).transpose(1, 2)  # 4: max-pool N → C, (B, C, D)
        return (x + self.positional_embedding) * torch.tanh(self.alpha_cond)  # 5

    def rows(self, src_feats: torch.Tensor, trg_feats: torch.Tensor | None = None) -> torch.Tensor:
        """The learned input rows ``[global | conditional]``.

        Shape: ``src_feats, trg_feats (B, N, c)`` → ``(B, G + C, D)``.
        """
        cond = self.conditional_tokens(src_feats, trg_feats)
        return torch.cat([self.global_embeds.expand(cond.shape[0], -1, -1), cond], dim=1)

    def forward(self, sd, src_feats: torch.Tensor, trg_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning (text encoder dtype) from the pairs' DINOv2 features.

        Shape: ``src_feats, trg_feats (B, N, c)`` → ``(B, 77, D)``.
        """
        return encode_rows(sd, self.rows(src_feats, trg_feats))

    def image_features(self, samples) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DINOv2 features ``(B, N, c)`` of the samples' source and (pair mode) target images."""
        if self.dino is None:
            raise RuntimeError("no DINOv2 attached to this CPM: set prompt.dino = DinoFeatures(...)")
        if any(getattr(s, "src_image", None) is None or (self.mode == "pair" and getattr(s, "trg_image", None) is None)
               for s in samples):
            raise ValueError("a CPM prompt conditions on image pairs: give samples with src_image and trg_image")
        images = [s.src_image for s in samples] + ([s.trg_image for s in samples] if self.mode == "pair" else [])
        feats = self.dino(images)
        return feats[: len(samples)], (feats[len(samples) :] if self.mode == "pair" else None)

    def condition(self, sd, samples) -> torch.Tensor:
        """Conditioning ``(B, 77, D)`` of pairs (images already mirrored for flipped rows)."""
        return self(sd, *self.image_features(samples))

    def key(self, sample) -> str:
        return f"{image_key(sample.src_image)}:{image_key(sample.trg_image)}"

    def param_groups(self, lr: float) -> list[dict]:
        """Adam groups: ``lr`` (paper 1e-2) for the three embeddings, :attr:`lr_linear` (1e-3) for the linears."""
        return [{"params": [self.global_embeds, self.positional_embedding, self.alpha_cond], "lr": lr},
                {"params": [*self.linear_C.parameters(), *self.linear_N.parameters()], "lr": self.lr_linear}]

    @torch.no_grad()
    def gate(self) -> torch.Tensor:
        """``tanh(alpha_cond)``: ``(C, D)`` float32 on the CPU (how much of each conditional entry passes)."""
        return torch.tanh(self.alpha_cond[0]).float().cpu()

    @torch.no_grad()
    def token_norms(self) -> dict[str, torch.Tensor]:
        """L2 norms per token: ``global (G,)``, ``positional (C,)``, ``gate (C,)`` (of tanh(alpha_cond))."""
        return {"global": self.global_embeds[0].norm(dim=-1).float().cpu(),
                "positional": self.positional_embedding[0].norm(dim=-1).float().cpu(),
                "gate": self.gate().norm(dim=-1)}

    def describe(self) -> dict:
        g = self.gate()
        return {"prompt": "cpm", "n_global": self.n_global, "n_cond": self.n_cond, "mode": self.mode,
                "features": self.features, "n_params": sum(p.numel() for p in self.parameters()),
                "dino": {k: v for k, v in self.dino_info.items() if k != "probe"},
                "gate": {**{stat: float(getattr(g, stat)()) for stat in ("mean", "std", "min", "max")},
                         "mean_abs": float(g.abs().mean())}}

    def file_metadata(self) -> dict:
        """Metadata that rebuilds the module (and its DINOv2) from a prompt file."""
        return {"n_global": self.n_global, "n_cond": self.n_cond, "mode": self.mode, "features": self.features,
                "n_patches": self.n_patches, "dino_dim": self.dino_dim, "lr_linear": self.lr_linear,
                "dino": self.dino_info}

    def save(self, path, sd, extra: dict | None = None):
        """Write the CPM as a prompt file (kind ``"cpm"``, tensors under their ``state_dict`` keys)."""
        return write_prompt_file(path, sd, "cpm", dict(self.state_dict()), {**self.file_metadata(), **(extra or {})},
                                 text_dim=self.text_dim)

    @classmethod
    def load(cls, path, sd, check_model: bool = True, dino=None, dino_cache=None) -> "ConditionalPrompt":
        """Read a CPM prompt file for model ``sd``; ``dino``: ``None`` (the DINOv2 the file records, built on first
        use), a spec overriding it or a ready ``DinoFeatures``; ``check_model`` also checks the DINOv2's weights."""
        tensors, meta = read_prompt_file(path, sd, check_model)
        if meta.get("kind") != "cpm":
            raise ValueError(f"{path}: not a CPM prompt file (kind={meta.get('kind')!r})")
        get = lambda k, d=None: json.loads(meta[k]) if k in meta else d  # noqa: E731
        n_global, n_cond, n_patches, dino_dim = get("n_global"), get("n_cond"), get("n_patches", 256), get("dino_dim")
        mode, features = meta.get("mode", "pair"), meta.get("features", "patch")
        check_tensors(tensors, cpm_shapes(sd.text_dim, dino_dim, n_global, n_cond, mode, n_patches), path)
        prompt = cls(sd.text_dim, dino_dim, n_global, n_cond, mode, features, n_patches, get("lr_linear", 1e-3))
        prompt.load_state_dict({k: tensors[k] for k in CPM_KEYS})
        prompt.metadata = meta
        prompt.dino_info = get("dino", {}) or {}
        prompt.to(sd.device)
        if dino is not None and not isinstance(dino, str):
            prompt.dino = dino
            return prompt
        spec = dino or prompt.dino_info.get("spec") or prompt.dino_info.get("model")
        if not spec:
            raise ValueError(f"{path}: the file does not say which DINOv2 it needs; pass dino=...")
        seed, probe = prompt.dino_info.get("seed", 0), prompt.dino_info.get("probe")

        def loader():
            features = DinoFeatures(spec, device=sd.device, seed=seed, cache_dir=dino_cache)
            if check_model and probe and not same_weights(probe, features.describe()["probe"]):
                raise ValueError(f"{path}: CPM was learned with DINOv2 {prompt.dino_info.get('model')!r} "
                                 f"(fingerprint {prompt.dino_info.get('fingerprint')}), not with {spec!r} "
                                 f"(fingerprint {features.identity['fingerprint']}); pass check_model=False to force")
            return features

        prompt._dino_loader = loader
        return prompt


def check_keys(tensors: dict[str, torch.Tensor], keys, source, what: str = "a CPM state dict") -> None:
    """Raise ``ValueError`` (naming ``source``: "not ``what``") when keys are missing or unexpected."""
    missing = [k for k in keys if k not in tensors]
    unexpected = [k for k in tensors if k not in keys]
    if missing or unexpected:
        raise ValueError(f"{source}: not {what}: missing keys {missing}, unexpected keys {unexpected} "
                         f"(expected exactly {list(keys)})")


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source) -> None:
    """Raise ``ValueError`` (naming ``source``) when keys are missing or unexpected, or a shape differs."""
    check_keys(tensors, list(expected), source)
    bad = [f"{k}: expected {tuple(v)}, found {tuple(tensors[k].shape)}" for k, v in expected.items()
           if tuple(tensors[k].shape) != tuple(v)]
    if bad:
        raise ValueError(f"{source}: CPM tensor shapes do not fit this model: " + "; ".join(bad))
