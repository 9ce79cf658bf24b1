"""Zero-shot (and, later, learned-prompt) evaluation: dataset pairs → features → matchers → predictions → PCK.

:func:`predict` yields one row per keypoint (the ``predictions.csv`` schema); :func:`run_evaluation` writes
``predictions.csv`` and ``metrics.json`` whose numbers are computed from exactly that table.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import __version__
from .cache import atomic_write_json, atomic_write_text
from .features import FeatureExtractor, image_key
from .matching import MATCHERS, match_all
from .metrics import ALPHAS, bootstrap_ci, pck_records
from .prompts import FIXED_PROMPTS, LearnedPrompt, conditioning_key, encode_text, prompt_text

#: Columns of ``predictions.csv`` (then any per-pair flags, such as SPair's difficulty flags).
PREDICTION_COLUMNS = [
    "pair_id", "category", "kp_index", "kp_name", "src_name", "trg_name",
    "src_x", "src_y", "gt_x", "gt_y", "thr", "pred_x", "pred_y", "matcher",
    "gt_x_orig", "gt_y_orig", "pred_x_orig", "pred_y_orig", "thr_orig",
]
#: The paper's test-time settings (SPEC §2, §6).
PAPER_TEST_SETTINGS = dict(layer=1, timestep=50, ensemble=8, matcher="kernel_softmax")


@dataclass
class EvalSettings:
    """Everything that determines an evaluation run (written into ``metrics.json``)."""

    dataset: str
    data_root: str
    split: str = "test"
    model: str = "tiny"
    prompt: str = "text"
    layer: int = 1
    timestep: int = 50
    ensemble: int = 8
    matchers: list[str] = field(default_factory=lambda: ["kernel_softmax"])
    limit: int | None = None
    seed: int = 0
    img_size: int | None = None
    latent: str = "sample"
    precision: str = "fp32"
    device: str = "cpu"
    batch_size: int = 8
    cache_dir: str | None = None


def parse_matchers(spec: str | list[str]) -> list[str]:
    """``"all"`` → every matcher; ``"nn,softmax"`` → that list (validated)."""
    names = list(MATCHERS) if spec == "all" or spec == ["all"] else (spec.split(",") if isinstance(spec, str) else list(spec))
    bad = [m for m in names if m not in MATCHERS]
    if bad:
        raise ValueError(f"unknown matcher(s) {bad}; expected 'all' or some of {list(MATCHERS)}")
    return names


class FixedPromptConditioning:
    """Conditioning ``(1, 77, D)`` of a pair by a fixed prompt (``"text"`` or ``"empty"``). It depends only on
    the category, so it is encoded once per category and each image's features can be reused across pairs."""

    pair_dependent = False

    def __init__(self, sd, kind: str):
        if kind not in FIXED_PROMPTS:
            raise ValueError(f"unknown prompt {kind!r}; expected one of {FIXED_PROMPTS} or a prompt file")
        self.sd, self.kind = sd, kind
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, sample) -> torch.Tensor:
        text = prompt_text(self.kind, sample.category)
        if text not in self._cache:
            self._cache[text] = encode_text(self.sd, [text])
        return self._cache[text]

    def describe(self) -> dict:
        return {"prompt": self.kind}


ConditioningProvider = FixedPromptConditioning  # TEMP alias, removed once callers are renamed


class LearnedPromptConditioning:
    """Conditioning of a pair by a learned Single / Class prompt (no grad), cached per category."""

    pair_dependent = False

    def __init__(self, sd, prompt: LearnedPrompt, source: str | None = None):
        self.sd, self.prompt, self.source = sd, prompt, source
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, sample) -> torch.Tensor:
        key = "*" if self.prompt.kind == "single" else sample.category
        if key not in self._cache:
            self._cache[key] = self.prompt(self.sd, [sample.category])
        return self._cache[key]

    def describe(self) -> dict:
        return {"prompt": self.prompt.kind, "file": self.source, "n_tokens": self.prompt.n_tokens,
                "categories": self.prompt.categories}


def make_conditioning(sd, spec: str):
    """``"text"`` / ``"empty"`` → fixed prompt; a path to a prompt file → the learned prompt it holds."""
    if spec in FIXED_PROMPTS:
        return FixedPromptConditioning(sd, spec)
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        return LearnedPromptConditioning(sd, LearnedPrompt.load(path, sd), str(path))
    raise ValueError(f"--prompt must be one of {FIXED_PROMPTS} or a prompt .safetensors file, got {spec!r}")


def _pair_rows(sample, preds: dict[str, torch.Tensor]) -> list[dict]:
    w, h = sample.trg_image.size
    s = sample.img_size
    rows = []
    names = sample.kp_names or [None] * sample.n_kps
    for m, p in preds.items():
        p = p.detach().cpu().double().numpy()
        for k in range(sample.n_kps):
            rows.append({
                "pair_id": sample.pair_id, "category": sample.category, "kp_index": k, "kp_name": names[k],
                "src_name": sample.src_name, "trg_name": sample.trg_name,
                "src_x": sample.src_kps_r[k, 0], "src_y": sample.src_kps_r[k, 1],
                "gt_x": sample.trg_kps_r[k, 0], "gt_y": sample.trg_kps_r[k, 1], "thr": sample.thr,
                "pred_x": p[k, 0], "pred_y": p[k, 1], "matcher": m,
                "gt_x_orig": sample.trg_kps[k, 0], "gt_y_orig": sample.trg_kps[k, 1],
                "pred_x_orig": p[k, 0] * w / s, "pred_y_orig": p[k, 1] * h / s, "thr_orig": sample.thr_orig,
                **{f: int(v) for f, v in sample.flags.items()},
            })
    return rows


def predict(
    dataset,
    extractor: FeatureExtractor,
    conditioning,
    matchers: list[str],
    layer: int = 1,
    limit: int | None = None,
    memory_cache: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every keypoint of the first ``limit`` pairs with each matcher.

    Features of an image are computed once and kept in an in-memory LRU of ``memory_cache`` images while the
    conditioning does not depend on the pair.

    Returns:
        The predictions table (:data:`PREDICTION_COLUMNS` plus flag columns), coordinates in ``img_size`` space.
    """
    if dataset.img_size != extractor.img_size:
        raise ValueError(f"dataset img_size {dataset.img_size} != extractor img_size {extractor.img_size}")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    lru: OrderedDict = OrderedDict()
    rows: list[dict] = []
    for i in tqdm(range(n), desc=f"{dataset.name}/{dataset.split}", disable=not progress, unit="pair"):
        sample = dataset[i]
        cond = conditioning(sample)
        images = [sample.src_image, sample.trg_image]
        ckey = conditioning_key(cond)
        keys = [(image_key(im), ckey) for im in images]
        missing = [j for j, k in enumerate(keys) if k not in lru or conditioning.pair_dependent]
        if missing:
            feats = extractor([images[j] for j in missing], cond)[layer]
            for j, f in zip(missing, feats):
                lru[keys[j]] = f
                while len(lru) > memory_cache:
                    lru.popitem(last=False)
        src_feat, trg_feat = lru[keys[0]], lru[keys[1]]
        for k in keys:
            lru.move_to_end(k)
        src_kps = torch.as_tensor(sample.src_kps_r, dtype=torch.float32, device=src_feat.device)
        preds = match_all(src_feat, trg_feat, src_kps, sample.img_size, methods=matchers)
        rows.extend(_pair_rows(sample, preds))
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=PREDICTION_COLUMNS)
    return df


def summarize(df: pd.DataFrame, img_size: int, alphas=ALPHAS) -> dict:
    """``metrics.json`` body: the PCK records plus bootstrap 95% intervals of the overall numbers."""
    records = pck_records(df, alphas=alphas, spaces=("resized", "original"), img_size=img_size)
    intervals = []
    for m in df["matcher"].unique() if len(df) else []:
        sub = df[df["matcher"] == m]
        for a in alphas:
            for avg in ("per_image", "per_point"):
                lo, hi = bootstrap_ci(sub, alpha=a, averaging=avg, space="resized", img_size=img_size, n_boot=1000)
                intervals.append({"matcher": m, "alpha": a, "averaging": avg, "space": "resized",
                                  "ci_low": lo, "ci_high": hi, "level": 0.95})
    return {"results": records, "bootstrap": intervals}


def provenance() -> dict:
    """Package and library versions, machine and date."""
    import diffusers
    import transformers

    return {
        "sd4match_version": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_evaluation(settings: EvalSettings, out_dir: str | Path, sd=None, progress: bool = True) -> dict:
    """Evaluate and write ``out_dir/predictions.csv`` and ``out_dir/metrics.json`` (atomically).

    Returns:
        The ``metrics.json`` content.
    """
    from .data import load_dataset
    from .models import load_sd

    out_dir = Path(out_dir)
    matchers = parse_matchers(settings.matchers)
    if sd is None:
        sd = load_sd(settings.model, device=settings.device, precision=settings.precision)
    img_size = settings.img_size or sd.native_img_size
    dataset = load_dataset(settings.dataset, settings.data_root, settings.split, img_size=img_size)
    extractor = FeatureExtractor(
        sd, layers=(settings.layer,), timestep=settings.timestep, ensemble=settings.ensemble,
        latent=settings.latent, img_size=img_size, seed=settings.seed, batch_size=settings.batch_size,
        cache_dir=settings.cache_dir,
    )
    conditioning = make_conditioning(sd, settings.prompt)
    df = predict(dataset, extractor, conditioning, matchers, settings.layer, settings.limit, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "predictions.csv", df.to_csv(index=False))
    metrics = {
        **summarize(df, img_size),
        "settings": {**asdict(settings), "matchers": matchers, "img_size": img_size},
        "model": sd.identity,
        "features": extractor.settings(),
        "conditioning": conditioning.describe(),
        "dataset": {"name": dataset.name, "root": str(dataset.root), "split": dataset.split,
                    "n_pairs": int(df["pair_id"].nunique()) if len(df) else 0, "n_keypoints": int(len(df) / max(len(matchers), 1))},
        "provenance": provenance(),
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def headline(metrics: dict, alpha: float = 0.1) -> pd.DataFrame:
    """Overall PCK@alpha per matcher × averaging × space, as a small table for printing."""
    recs = [r for r in metrics["results"] if r["category"] == "all" and np.isclose(r["alpha"], alpha)]
    if not recs:
        return pd.DataFrame()
    return pd.DataFrame(recs).pivot_table(index="matcher", columns=["space", "averaging"], values="pck")
