"""Zero-shot (and, later, learned-prompt) evaluation: dataset pairs → features → matchers → predictions → PCK.

:func:`predict` yields one row per keypoint (the ``predictions.csv`` schema); :func:`run_evaluation` writes
``predictions.csv`` and ``metrics.json`` whose numbers are computed from exactly that table.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
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
from .prompts import FIXED_PROMPTS, conditioning_key, encode_text, load_prompt, prompt_text

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
    dino: str | None = None  # CPM prompts: DINOv2 overriding the one recorded in the prompt file
    dino_cache: str | None = None  # CPM prompts: on-disk cache of DINOv2 features


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


class LearnedPromptConditioning:
    """Conditioning of a pair by a learned prompt module (Single, Class or CPM), without gradients.

    Category-level prompts are computed once per :meth:`cache_key`; pair-dependent ones (CPM) for every pair.
    """

    def __init__(self, sd, prompt, source: str | None = None):
        self.sd, self.prompt, self.source = sd, prompt, source
        self.pair_dependent = bool(getattr(prompt, "pair_dependent", False))
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, sample) -> torch.Tensor:
        if self.pair_dependent:
            return self.prompt.condition(self.sd, [sample])
        key = self.prompt.cache_key(sample)
        if key not in self._cache:
            self._cache[key] = self.prompt.condition(self.sd, [sample])
        return self._cache[key]

    def describe(self) -> dict:
        return {**self.prompt.describe(), "file": self.source}


def make_conditioning(sd, spec: str, **cpm_options):
    """``"text"`` / ``"empty"`` → fixed prompt; a path to a prompt file → the learned prompt it holds
    (``cpm_options``: ``dino``, ``dino_cache`` for CPM files, see :func:`~sd4match_utils.prompts.load_prompt`)."""
    if spec in FIXED_PROMPTS:
        return FixedPromptConditioning(sd, spec)
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        return LearnedPromptConditioning(sd, load_prompt(path, sd, **cpm_options), str(path))
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


def _image_ids(entry) -> tuple[tuple, tuple]:
    """Cheap identities of a pair's two images (file and mirroring), known without opening them."""
    flip = bool(getattr(entry, "flip", False))
    return (str(entry.src_path), flip), (str(entry.trg_path), flip)


def predict(
    dataset,
    extractor: FeatureExtractor,
    conditioning,
    matchers: list[str],
    layer: int = 1,
    limit: int | None = None,
    progress: bool = True,
    indices=None,
    chunk: int = 8,
    on_rows=None,
) -> pd.DataFrame:
    """Predict every keypoint of the chosen pairs with each matcher.

    When the conditioning does not depend on the pair, each unique image (under each conditioning) is extracted
    **once**: the pair list is known in advance, so an image's features are kept exactly until the last pair
    that uses it (memory is bounded by the images shared by pairs still to come, not by the split). The missing
    images of ``chunk`` consecutive pairs are extracted together, in batched UNet calls.

    Args:
        indices: pair indices to process (default: the first ``limit`` pairs).
        on_rows: optional callback ``on_rows(pair_index, rows)`` after each pair (used to write shards).

    Returns:
        The predictions table (:data:`PREDICTION_COLUMNS` plus flag columns), coordinates in ``img_size`` space.
    """
    if dataset.img_size != extractor.img_size:
        raise ValueError(f"dataset img_size {dataset.img_size} != extractor img_size {extractor.img_size}")
    if indices is None:
        indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    indices = list(indices)
    entries = getattr(dataset, "entries", None)
    last_use: dict = {}
    if entries is not None:
        for pos, i in enumerate(indices):
            for ident in _image_ids(entries[i]):
                last_use[ident] = pos
    live: dict = {}  # (image identity, conditioning key) → (C, h, w) features
    rows: list[dict] = []
    bar = tqdm(total=len(indices), desc=f"{dataset.name}/{dataset.split}", disable=not progress, unit="pair")
    for c0 in range(0, len(indices), chunk):
        block = [(pos, indices[pos], dataset[indices[pos]]) for pos in range(c0, min(c0 + chunk, len(indices)))]
        conds = [conditioning(sample) for _, _, sample in block]
        # the images of this chunk not yet extracted, grouped by conditioning
        todo: dict[str, tuple[torch.Tensor, dict]] = {}
        pair_keys = []
        for (pos, i, sample), cond in zip(block, conds):
            ckey = conditioning_key(cond) if not conditioning.pair_dependent else f"pair:{i}"
            ids = _image_ids(entries[i]) if entries is not None else (image_key(sample.src_image),
                                                                       image_key(sample.trg_image))
            keys = [(ident, ckey) for ident in ids]
            pair_keys.append(keys)
            for key, img in zip(keys, (sample.src_image, sample.trg_image)):
                if key not in live:
                    todo.setdefault(ckey, (cond, {}))[1].setdefault(key, img)
        for cond, images in todo.values():
            feats = extractor(list(images.values()), cond)[layer]
            for key, f in zip(images, feats):
                live[key] = f
        for (pos, i, sample), keys in zip(block, pair_keys):
            src_feat, trg_feat = live[keys[0]], live[keys[1]]
            src_kps = torch.as_tensor(sample.src_kps_r, dtype=torch.float32, device=src_feat.device)
            pair_rows = _pair_rows(sample, match_all(src_feat, trg_feat, src_kps, sample.img_size, methods=matchers))
            rows.extend(pair_rows)
            if on_rows is not None:
                on_rows(i, pair_rows)
            for key in keys:  # drop features no later pair needs
                if conditioning.pair_dependent or last_use.get(key[0], -1) <= pos:
                    live.pop(key, None)
            bar.update(1)
    bar.close()
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


#: Settings that do not change the predictions (so a run may be resumed with other values).
_RESUME_FREE = ("cache_dir", "dino_cache", "batch_size", "shard_size")


class _ShardWriter:
    """Collects rows per pair and writes every ``size`` finished pairs as one shard CSV (atomically)."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size, self.pending, self.first = folder, size, [], None

    def __call__(self, index: int, rows: list[dict]) -> None:
        self.first = index if self.first is None else self.first
        self.pending.append((index, rows))
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        idx = [i for i, _ in self.pending]
        rows = [r for _, rs in self.pending for r in rs]
        df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=PREDICTION_COLUMNS)
        df.insert(0, "pair_index", [i for i, rs in self.pending for _ in rs])
        atomic_write_text(self.folder / f"pairs-{min(idx):06d}-{max(idx):06d}.csv", df.to_csv(index=False))
        self.pending, self.first = [], None


def _finished_pairs(folder: Path) -> tuple[set[int], list[Path]]:
    """Pair indices covered by the shard files in ``folder`` (each shard names its first and last pair)."""
    done, files = set(), sorted(folder.glob("pairs-*.csv"))
    for f in files:
        a, b = (int(x) for x in f.stem.split("-")[1:3])
        shard = pd.read_csv(f, usecols=["pair_index"]) if f.stat().st_size else None
        done.update(shard["pair_index"].unique().tolist() if shard is not None and len(shard) else range(a, b + 1))
    return done, files


def run_evaluation(settings: EvalSettings, out_dir: str | Path, sd=None, progress: bool = True,
                   resume: bool = False, shard_size: int = 200) -> dict:
    """Evaluate and write ``out_dir/predictions.csv`` and ``out_dir/metrics.json`` (atomically).

    Work is saved as it goes: every ``shard_size`` finished pairs are written to ``out_dir/shards/`` (one atomic
    CSV each). With ``resume=True`` an interrupted run skips the pairs its shards already hold (the settings must
    match, checked against ``shards/manifest.json``); without it, old shards are discarded. The final files are
    assembled from the shards, so killing a run at any moment never leaves a half-written result.

    Returns:
        The ``metrics.json`` content.
    """
    import shutil

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
    conditioning = make_conditioning(sd, settings.prompt, dino=settings.dino, dino_cache=settings.dino_cache)
    n = len(dataset) if settings.limit is None else min(settings.limit, len(dataset))

    shards = out_dir / "shards"
    manifest = {"settings": {k: v for k, v in asdict(settings).items() if k not in _RESUME_FREE},
                "matchers": matchers, "img_size": img_size, "model": sd.identity.get("fingerprint"), "n_pairs": n}
    manifest = json.loads(json.dumps(manifest, default=str))
    if shards.exists() and resume:
        saved = json.loads((shards / "manifest.json").read_text()) if (shards / "manifest.json").is_file() else None
        if saved != manifest:
            raise ValueError(f"{shards}: cannot resume, these shards were made with other settings "
                             f"(saved {saved}, now {manifest}); run without --resume to start again")
    elif shards.exists():
        shutil.rmtree(shards)
    shards.mkdir(parents=True, exist_ok=True)
    atomic_write_json(shards / "manifest.json", manifest)
    done, _ = _finished_pairs(shards)
    todo = [i for i in range(n) if i not in done]
    writer = _ShardWriter(shards, shard_size)
    predict(dataset, extractor, conditioning, matchers, settings.layer, progress=progress, indices=todo,
            on_rows=writer)
    writer.flush()

    _, files = _finished_pairs(shards)
    parts = [pd.read_csv(f) for f in files if f.stat().st_size]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["pair_index", *PREDICTION_COLUMNS])
    df = df.sort_values(["pair_index", "matcher", "kp_index"], kind="stable").drop(columns="pair_index")
    df = df.reset_index(drop=True)
    atomic_write_text(out_dir / "predictions.csv", df.to_csv(index=False))
    metrics = {
        **summarize(df, img_size),
        "settings": {**asdict(settings), "matchers": matchers, "img_size": img_size},
        "model": sd.identity,
        "features": extractor.settings(),
        "conditioning": conditioning.describe(),
        "dataset": {"name": dataset.name, "root": str(dataset.root), "split": dataset.split,
                    "n_pairs": int(df["pair_id"].nunique()) if len(df) else 0,
                    "n_keypoints": int(len(df) / max(len(matchers), 1))},
        "run": {"pairs_computed_now": len(todo), "pairs_from_earlier_runs": n - len(todo),
                "unique_images_extracted": extractor.extracted},
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
