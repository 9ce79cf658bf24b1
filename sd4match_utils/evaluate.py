"""Zero-shot (and learned-prompt) evaluation: dataset pairs → features → matchers → predictions → PCK.

:func:`predict` yields one row per keypoint (the ``predictions.csv`` schema); :func:`run_evaluation` writes
``predictions.csv`` and ``metrics.json`` whose numbers are computed from exactly that table.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .cache import (atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256, locked_folder, read_json,
                    tensor_key)
from .checks import (check_device, check_has_pairs, check_img_size, check_limit, check_positive,
                     check_writable_folder)
from .conditioning import check_prompt_spec, make_conditioning
from .data import DATASETS, DEFAULT_IMG_SIZE, load_dataset
from .features import FeatureExtractor, NonFiniteFeaturesError, image_key
from .matching import MATCHERS, match_all
from .metrics import ALPHAS, bootstrap_ci, pck_records
from .report import provenance
from .settings import option, result_fields, shared

#: Columns of ``predictions.csv`` (then any per-pair flags, such as SPair's difficulty flags).
PREDICTION_COLUMNS = [
    "pair_id", "category", "kp_index", "kp_name", "src_name", "trg_name",
    "src_x", "src_y", "gt_x", "gt_y", "thr", "pred_x", "pred_y", "matcher",
    "gt_x_orig", "gt_y_orig", "pred_x_orig", "pred_y_orig", "thr_orig",
]
#: The paper's test-time settings (SPEC §2, §6).
PAPER_TEST_SETTINGS = dict(layer=1, timestep=50, ensemble=8, matcher="kernel_softmax")
#: Files of a finished evaluation (removed when a new, not resumed, run starts in the folder).
RESULT_FILES = ("predictions.csv", "metrics.json")


def apply_recommended(settings, recommended: dict, timestep_key: str = "timestep"):
    """``settings`` (a settings dataclass or a dict) with its unset (None) ``layer`` / ``timestep`` /
    ``val_timestep`` filled from a model's recommended read-out (``SDModel.recommended``; SD 2-1: up-block 1,
    t = 50 at test and 261 in training), so that result files record the values actually used."""
    wanted = {"layer": "layer", "timestep": timestep_key, "val_timestep": "timestep"}
    values = settings if isinstance(settings, dict) else vars(settings)
    fill = {k: recommended[r] for k, r in wanted.items() if values.get(k, 0) is None}
    if isinstance(settings, dict):
        return {**settings, **fill}
    return replace(settings, **fill) if fill else settings


def resolved_settings(settings, sd, timestep_key: str = "timestep"):
    """A settings dataclass as a run on the loaded model ``sd`` uses (and records) it: ``precision="auto"`` as the
    model's own, the unset read-out filled by :func:`apply_recommended`."""
    if settings.precision == "auto":
        settings = replace(settings, precision=sd.identity.get("precision") or "auto")
    return apply_recommended(settings, sd.recommended, timestep_key)


@dataclass
class EvalSettings:
    """Everything that determines an evaluation run (written into ``metrics.json``); each field declares its
    ``sd4match evaluate`` option and whether it changes the predictions (see :mod:`~sd4match_utils.settings`)."""

    dataset: str = option(choices=DATASETS)
    data_root: str = option(type=Path)
    split: str = option("test", choices=["trn", "val", "test"])
    model: str = shared("model", "tiny")
    prompt: str = option("text", "text, empty, or a learned prompt file (.safetensors)")
    layer: int | None = option(None, "up-block to read (default: the model's recommended; SD 2-1: 1, the paper's)",
                               choices=[0, 1, 2, 3])
    timestep: int | None = option(None, "diffusion timestep (default: the model's recommended; SD 2-1: 50, the "
                                        "paper's test)")
    ensemble: int = option(8, "noise copies averaged (paper test: 8)")
    matchers: list[str] = option(
        help="kernel_softmax (paper), nn, bilinear, softmax, window_softargmax, mutual_nn, a comma list, or all",
        flag="--matcher", cli_default="kernel_softmax", parse=lambda spec: parse_matchers(spec),
        default_factory=lambda: ["kernel_softmax"])
    limit: int | None = option(None, "evaluate only the first N pairs")
    seed: int = shared("seed", 0)
    img_size: int | None = shared("img_size", None)
    latent: str = shared("latent", "sample")
    precision: str = shared("precision", "fp32")
    device: str = shared("device", "cpu")
    # counts: it sets how an image's ensemble copies are chunked in UNet calls, which changes the last bits
    batch_size: int = option(8, "UNet rows per call (images × ensemble are chunked)")
    cache_dir: str | None = option(None, "on-disk cache of latents and features", type=Path, result=False)
    dino: str | None = option(None, "DINOv2 of a CPM prompt (default: the one recorded in the prompt file)")
    dino_cache: str | None = shared("dino_cache", None)

    def check(self) -> None:
        """Cheap checks of the values (no model, no data): ``ValueError`` naming the bad one."""
        check_positive("batch_size", self.batch_size)
        check_positive("ensemble", self.ensemble)
        check_img_size(self.img_size)
        check_limit("limit", self.limit)
        check_device(self.device)


def parse_matchers(spec: str | list[str]) -> list[str]:
    """``"all"`` → every matcher; ``"nn,softmax"`` → that list (validated)."""
    if spec == "all" or spec == ["all"]:
        names = list(MATCHERS)
    else:
        names = spec.split(",") if isinstance(spec, str) else list(spec)
    bad = [m for m in names if m not in MATCHERS]
    if bad:
        raise ValueError(f"unknown matcher(s) {bad}; expected 'all' or some of {list(MATCHERS)}")
    return names


def _pair_rows(sample, preds: dict[str, torch.Tensor], layer: int | None = None) -> list[dict]:
    w, h = sample.trg_image.size
    s = sample.img_size
    names = sample.kp_names or [None] * sample.n_kps
    extra = {f: int(v) for f, v in sample.flags.items()} | ({} if layer is None else {"layer": layer})
    rows = []
    for m, p in preds.items():
        p = p.detach().cpu().double().numpy()
        rows += [{
            "pair_id": sample.pair_id, "category": sample.category, "kp_index": k, "kp_name": names[k],
            "src_name": sample.src_name, "trg_name": sample.trg_name,
            "src_x": sample.src_kps_r[k, 0], "src_y": sample.src_kps_r[k, 1],
            "gt_x": sample.trg_kps_r[k, 0], "gt_y": sample.trg_kps_r[k, 1], "thr": sample.thr,
            "pred_x": p[k, 0], "pred_y": p[k, 1], "matcher": m,
            "gt_x_orig": sample.trg_kps[k, 0], "gt_y_orig": sample.trg_kps[k, 1],
            "pred_x_orig": p[k, 0] * w / s, "pred_y_orig": p[k, 1] * h / s, "thr_orig": sample.thr_orig, **extra,
        } for k in range(sample.n_kps)]
    return rows


def _image_ids(entry) -> tuple[tuple, tuple]:
    """Cheap identities of a pair's two images (file and mirroring), known without opening them."""
    flip = bool(getattr(entry, "flip", False))
    return (str(entry.src_path), flip), (str(entry.trg_path), flip)


def _image_name(ident) -> str:
    """An image identity of :func:`_image_ids` (``(path, flip)``, or a content key) as text for messages."""
    if isinstance(ident, tuple):
        return f"{ident[0]} (mirrored)" if ident[1] else str(ident[0])
    return f"with content key {ident}"


def predict(dataset, extractor: FeatureExtractor, conditioning, matchers: list[str],
            layer: int | Sequence[int] = 1, limit: int | None = None, progress: bool = True, indices=None,
            chunk: int = 8, on_rows=None, on_skip=None) -> pd.DataFrame:
    """Predict every keypoint of the chosen pairs with each matcher; returns the predictions table
    (:data:`PREDICTION_COLUMNS` plus flag columns), coordinates in ``img_size`` space.

    When the conditioning does not depend on the pair, each unique image (under each conditioning) is extracted
    once and its features are kept exactly until the last pair that uses it. The missing images of ``chunk``
    consecutive pairs are extracted together, in batched UNet calls.

    Args:
        conditioning: the conditioning of one pair (:func:`~sd4match_utils.conditioning.make_conditioning`).
        layer: the up-block matched, or several (all read from one UNet pass per image; the extractor must
            return them): then every row has a ``layer`` column.
        indices: pair indices to process (default: the first ``limit`` pairs).
        on_rows: optional callback ``on_rows(pair_index, rows)`` after each pair.
        on_skip: optional callback ``on_skip(pair_index, sample, reason)`` for each pair without any usable
            keypoint (``sample.n_kps == 0``): such pairs have no rows and no features are extracted for them.
    """
    if dataset.img_size != extractor.img_size:
        raise ValueError(f"dataset img_size {dataset.img_size} != extractor img_size {extractor.img_size}")
    layer_column = not isinstance(layer, numbers.Integral)
    layers = tuple(int(l) for l in layer) if layer_column else (int(layer),)
    if not layers or not set(layers) <= set(extractor.layers):
        raise ValueError(f"layer(s) {list(layers)} not among the extractor's up-blocks {list(extractor.layers)}")
    if indices is None:
        indices = range(len(dataset) if limit is None else min(limit, len(dataset)))
    indices = list(indices)
    entries = getattr(dataset, "entries", None)
    last_use = {}
    if entries is not None:
        last_use = {ident: pos for pos, i in enumerate(indices) for ident in _image_ids(entries[i])}
    live: dict = {}  # (image identity, conditioning key) → {layer: (C, h, w) features}
    rows: list[dict] = []
    bar = tqdm(total=len(indices), desc=f"{dataset.name}/{dataset.split}", disable=not progress, unit="pair")
    for c0 in range(0, len(indices), chunk):
        loaded = [(pos, indices[pos], dataset[indices[pos]]) for pos in range(c0, min(c0 + chunk, len(indices)))]
        block = [b for b in loaded if b[2].n_kps > 0]
        # the images of this chunk not yet extracted, grouped by conditioning
        todo: dict[str, tuple[torch.Tensor, dict]] = {}
        pair_keys = []
        for pos, i, sample in block:
            cond = conditioning(sample)
            ckey = tensor_key(cond) if not conditioning.pair_dependent else f"pair:{i}"
            ids = _image_ids(entries[i]) if entries is not None else (image_key(sample.src_image),
                                                                       image_key(sample.trg_image))
            pair_keys.append([(ident, ckey) for ident in ids])
            for key, img in zip(pair_keys[-1], (sample.src_image, sample.trg_image)):
                if key not in live:
                    todo.setdefault(ckey, (cond, {}))[1].setdefault(key, img)
        for cond, images in todo.values():
            try:
                feats = extractor(list(images.values()), cond)
            except NonFiniteFeaturesError as e:  # name the image by its file (only known here)
                named = {image_key(img): _image_name(key[0]) for key, img in images.items()}
                raise (e.renamed(named[e.image_key]) if e.image_key in named else e) from None
            for n, key in enumerate(images):
                live[key] = {l: feats[l][n] for l in layers}
        for (pos, i, sample), keys in zip(block, pair_keys):
            src, trg = live[keys[0]], live[keys[1]]
            src_kps = torch.as_tensor(sample.src_kps_r, dtype=torch.float32, device=src[layers[0]].device)
            pair_rows = [row for l in layers for row in _pair_rows(
                sample, match_all(src[l], trg[l], src_kps, sample.img_size, methods=matchers),
                l if layer_column else None)]
            rows.extend(pair_rows)
            if on_rows is not None:
                on_rows(i, pair_rows)
            for key in keys:  # drop features no later pair needs
                if conditioning.pair_dependent or last_use.get(key[0], -1) <= pos:
                    live.pop(key, None)
            bar.update(1)
        for pos, i, sample in (b for b in loaded if b[2].n_kps == 0):
            if on_skip is not None:
                on_skip(i, sample, getattr(sample, "skip_reason", None) or "no keypoint visible in both images")
            ids = set(_image_ids(entries[i])) if entries is not None else set()
            for key in [k for k in live if k[0] in ids and last_use.get(k[0], -1) <= pos]:
                live.pop(key)  # features whose last user was this skipped pair
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=PREDICTION_COLUMNS)


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


class _ShardWriter:
    """Collects rows (and skipped pairs) per pair and writes every ``size`` finished pairs as one shard: the rows
    (``pairs-A-B.csv``, with ``pair_index``), then its record (``pairs-A-B.json``: settings fingerprint, pair
    indices, skipped pairs and the CSV's SHA-256), each written atomically."""

    def __init__(self, folder: Path, size: int, fingerprint: str):
        self.folder, self.size, self.fingerprint = folder, size, fingerprint
        self.pending: list[tuple[int, list[dict], dict | None]] = []

    def __call__(self, index: int, rows: list[dict], skipped: dict | None = None) -> None:
        self.pending.append((index, rows, skipped))
        if len(self.pending) >= self.size:
            self.flush()

    def skip(self, index: int, sample, reason: str) -> None:
        self(index, [], {"pair_index": index, "pair_id": sample.pair_id, "category": sample.category,
                         "reason": reason})

    def flush(self) -> None:
        if not self.pending:
            return
        idx = [i for i, _, _ in self.pending]
        rows = [r for _, rs, _ in self.pending for r in rs]
        df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=PREDICTION_COLUMNS)
        df.insert(0, "pair_index", [i for i, rs, _ in self.pending for _ in rs])
        data = df.to_csv(index=False).encode("utf-8")
        stem = f"pairs-{min(idx):06d}-{max(idx):06d}"
        atomic_write_bytes(self.folder / f"{stem}.csv", data)
        atomic_write_json(self.folder / f"{stem}.json", {
            "fingerprint": self.fingerprint, "pairs": sorted(idx), "rows": len(df),
            "skipped": [s for _, _, s in self.pending if s is not None],
            "sha256": hashlib.sha256(data).hexdigest()})
        self.pending = []


def _finished_shards(folder: Path, fingerprint: str) -> tuple[set[int], list[tuple[Path, dict]]]:
    """Pair indices covered by the finished shards in ``folder`` and those shards ``(csv path, record)``: only a
    readable record with ``fingerprint`` and the SHA-256 of its CSV's bytes as they are now counts."""
    done: set[int] = set()
    good: list[tuple[Path, dict]] = []
    for record_path in sorted(folder.glob("pairs-*.json")):
        csv_path, record = record_path.with_suffix(".csv"), read_json(record_path)
        if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
            continue
        try:
            if file_sha256(csv_path) != record["sha256"]:
                continue
            pairs = {int(i) for i in record["pairs"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pairs & done:  # overlapping shards cannot both be right: keep the first
            continue
        done |= pairs
        good.append((csv_path, record))
    return done, good


def _open_shards(shards: Path, manifest: dict, resume: bool) -> tuple[str, set[int]]:
    """Check (on resume) and write ``shards/manifest.json``, remove unfinished shards and leftovers of interrupted
    writes; returns the settings fingerprint and the pair indices already done."""
    if resume and shards.exists() and (saved := read_json(shards / "manifest.json")) != manifest:
        raise ValueError(f"{shards}: cannot resume, these shards were made with other settings "
                         f"(saved {saved}, now {manifest}); run without --resume to start again")
    shards.mkdir(parents=True, exist_ok=True)
    atomic_write_json(shards / "manifest.json", manifest)
    fingerprint = settings_fingerprint(manifest)
    done, finished = _finished_shards(shards, fingerprint)
    kept = {p.name for c, _ in finished for p in (c, c.with_suffix(".json"))}
    for p in list(shards.glob("pairs-*")) + list(shards.glob(".pairs-*.tmp")):
        if p.name not in kept and p.is_file():
            p.unlink(missing_ok=True)
    return fingerprint, done


def settings_fingerprint(manifest: dict) -> str:
    """Short hash of a run's manifest (the settings that determine its predictions), stamped on every shard."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_evaluation(settings: EvalSettings, out_dir: str | Path, sd=None, progress: bool = True,
                   resume: bool = False, shard_size: int = 200) -> dict:
    """Evaluate and write ``out_dir/predictions.csv`` and ``out_dir/metrics.json`` (atomically); returns the latter.

    Cheap checks come first, before the model loads; the folder is then locked (a second run fails at once with
    :class:`~sd4match_utils.cache.FolderLockedError`) and, unless resuming, the previous results and shards go.
    Every ``shard_size`` pairs are saved to ``out_dir/shards/``; ``resume=True`` skips the pairs of finished shards
    of the same settings, and ``predictions.csv`` ends byte-identical to an uninterrupted run's (same machine and
    thread count). Pairs without any usable keypoint are listed under ``skipped``, with a warning on stderr.
    """
    out_dir = Path(out_dir)
    settings.check()
    check_positive("shard_size", shard_size)
    matchers = parse_matchers(settings.matchers)
    check_writable_folder(out_dir)
    check_prompt_spec(settings.prompt)
    index = load_dataset(settings.dataset, settings.data_root, settings.split,
                         img_size=settings.img_size or DEFAULT_IMG_SIZE)
    n = check_has_pairs(index, settings.limit)
    shards = out_dir / "shards"
    with locked_folder(out_dir, "evaluate"):
        if not resume:
            for name in RESULT_FILES:
                (out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(shards, ignore_errors=True)
        if sd is None:
            from .models import load_sd  # looked up when called, so that tests can stand in for it

            sd = load_sd(settings.model, device=settings.device, precision=settings.precision)
        settings = resolved_settings(settings, sd)
        img_size = settings.img_size or sd.native_img_size
        dataset = index if index.img_size == img_size else load_dataset(settings.dataset, settings.data_root,
                                                                          settings.split, img_size=img_size)
        extractor = FeatureExtractor(
            sd, layers=(settings.layer,), timestep=settings.timestep, ensemble=settings.ensemble,
            latent=settings.latent, img_size=img_size, seed=settings.seed, batch_size=settings.batch_size,
            cache_dir=settings.cache_dir)
        conditioning = make_conditioning(sd, settings.prompt, dino=settings.dino, dino_cache=settings.dino_cache)

        # only the settings that change the predictions: a run may be resumed with other cache folders, shard size
        manifest = {"settings": result_fields(settings), "matchers": matchers, "img_size": img_size,
                    "model": sd.identity.get("fingerprint"), "n_pairs": n}
        fingerprint, done = _open_shards(shards, json.loads(json.dumps(manifest, default=str)), resume)
        todo = [i for i in range(n) if i not in done]
        writer = _ShardWriter(shards, shard_size, fingerprint)
        predict(dataset, extractor, conditioning, matchers, settings.layer, progress=progress, indices=todo,
                on_rows=writer, on_skip=writer.skip)
        writer.flush()

        _, finished = _finished_shards(shards, fingerprint)
        missing = sorted(set(range(n)).difference(*(r["pairs"] for _, r in finished)))
        if missing:
            raise RuntimeError(f"{shards}: pairs {missing[:10]} have no finished shard after the run (disk trouble?)")
        parts = [pd.read_csv(f) for f, r in finished if r["rows"]]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["pair_index", *PREDICTION_COLUMNS])
        df = df.sort_values(["pair_index", "matcher", "kp_index"], kind="stable").drop(columns="pair_index")
        df = df.reset_index(drop=True)
        skipped = sorted((s for _, r in finished for s in r.get("skipped", [])), key=lambda s: s["pair_index"])
        atomic_write_text(out_dir / "predictions.csv", df.to_csv(index=False))
        metrics = {
            **summarize(df, img_size), "settings": {**asdict(settings), "matchers": matchers, "img_size": img_size},
            "model": sd.identity, "features": extractor.settings(), "conditioning": conditioning.describe(),
            "dataset": {"name": dataset.name, "root": str(dataset.root), "split": dataset.split,
                        "n_pairs": int(df["pair_id"].nunique()) if len(df) else 0,
                        "n_keypoints": int(len(df) / max(len(matchers), 1)), "n_skipped": len(skipped)},
            "skipped": skipped,
            "run": {"pairs_computed_now": len(todo), "pairs_from_earlier_runs": n - len(todo),
                    "unique_images_extracted": extractor.extracted},
            "provenance": provenance(),
        }
        atomic_write_json(out_dir / "metrics.json", metrics)
        if skipped:
            first = ", ".join(s["pair_id"] for s in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
            print(f"sd4match: warning: skipped {len(skipped)} of {n} pair(s) without any usable keypoint ({first}; "
                  f"first reason: {skipped[0]['reason']}); listed under 'skipped' in {out_dir / 'metrics.json'}",
                  file=sys.stderr)
        return metrics


def headline(metrics: dict, alpha: float = 0.1) -> pd.DataFrame:
    """Overall PCK@alpha per matcher × averaging × space, as a small table for printing."""
    recs = [r for r in metrics["results"] if r["category"] == "all" and np.isclose(r["alpha"], alpha)]
    if not recs:
        return pd.DataFrame()
    return pd.DataFrame(recs).pivot_table(index="matcher", columns=["space", "averaging"], values="pck")
