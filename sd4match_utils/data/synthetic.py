"""The embedded default dataset: procedurally drawn objects written in the exact SPair-71k, PF-Pascal and
PF-Willow layouts, so every loader, notebook and test runs without downloading anything.

Each image is one instance of a category (:func:`.render.render_instance`); a pair is two different instances of
the same category, so matching it is semantic, not the inversion of a warp. Hidden keypoints are ``null`` / NaN and
only keypoints visible in both images enter a pair (SPair rule). Deterministic: image ``i`` of category ``c`` of
dataset ``d`` is drawn from ``numpy.random.default_rng([seed, d, c, i])``, files have fixed formatting (the MAT
header's timestamp included), and each dataset folder is built in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import csv
import inspect
import io
import itertools
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.io

from ..cache import atomic_write_text, read_json
from .base import SPLITS
from .pfpascal import PFPASCAL_CLASSES
from .render import Instance, render_instance
from .shapes import KEYPOINT_NAMES, SHAPES, SYNTHETIC_CATEGORIES

GENERATOR_VERSION = 2
#: Real PF-Willow sub-classes drawn for each synthetic category (PF-Willow uses the first 10 keypoints).
WILLOW_SUBCLASSES: dict[str, tuple[str, ...]] = {
    "bottle": ("winebottle(M)", "winebottle(wC)", "winebottle(woC)"),
    "car": ("car(G)", "car(M)", "car(S)"),
    "motorbike": ("motorbike(G)", "motorbike(M)", "motorbike(S)"),
}
DEFAULT_PAIRS_PER_SPLIT = {"trn": 60, "val": 24, "test": 36}
FOLDERS = {"spair": "SPair-71k", "pfpascal": "PF-Pascal", "pfwillow": "PF-Willow"}
#: Random streams: one per written dataset, plus streams no written split ever uses (the embedded model's
#: pre-training images and the held-out pairs that choose its read-out layer).
_DATASET_CODE = {"spair": 1, "pfpascal": 2, "pfwillow": 3, "pretrain": 9, "selection": 10}
_NAME_BASE = {"spair": 0, "pfpascal": 300000, "pfwillow": 600000}


def _rng(seed: int, dataset: str, group: int, index: int, stream: int = 0) -> np.random.Generator:
    """Independent generator per (dataset, category / sub-class, image); ``stream = 1`` is for pair choice."""
    return np.random.default_rng([int(seed), _DATASET_CODE[dataset], group, index, stream])


def _draw(seed: int, stream: str, dataset: str, group: int, category: str, n_images: int,
          **render_kw) -> list[tuple[str, Instance]]:
    """``(name, instance)`` for the ``n_images`` images of category (or sub-class) number ``group``: image ``i`` is
    drawn from ``_rng(seed, stream, group, i)`` and named like ``2008_000123`` by the dataset-wide counter."""
    first = _NAME_BASE[dataset] + group * n_images
    names = [f"{2007 + k % 5}_{k:06d}" for k in range(first, first + n_images)]
    return [(name, render_instance(category, _rng(seed, stream, group, i), **render_kw))
            for i, name in enumerate(names)]


def _share(total: int, n: int) -> list[int]:
    """Split ``total`` into ``n`` near-equal integers (the first ones get the remainder)."""
    return [total // n + (i < total % n) for i in range(n)]


def _images_for(pairs: int) -> int:
    """The fewest images whose ordered pairs (n·(n−1)) reach ``pairs``."""
    n = 0 if pairs == 0 else 2
    while n * (n - 1) < pairs:
        n += 1
    return n


def _split_images(n_images: int, pairs: dict[str, int], what: str) -> dict[str, range]:
    """Disjoint image index ranges per split, each big enough for its pairs; spare images go to ``trn``."""
    need = {s: _images_for(p) for s, p in pairs.items()}
    if sum(need.values()) > n_images:
        raise ValueError(f"{what}: {n_images} images per category cannot give {pairs} pairs from disjoint images "
                         f"(needs at least {sum(need.values())})")
    need[next(iter(need))] += n_images - sum(need.values())
    ends = itertools.accumulate(need.values())
    return {split: range(end - n, end) for (split, n), end in zip(need.items(), ends)}


def _choose_pairs(rng: np.random.Generator, images: range, n_pairs: int) -> list[tuple[int, int]]:
    """``n_pairs`` distinct ordered pairs of different images, in random order."""
    candidates = [(a, b) for a in images for b in images if a != b]
    order = rng.permutation(len(candidates))[:n_pairs]
    return [candidates[i] for i in order]


def _check_categories(categories) -> tuple[str, ...]:
    categories = tuple(categories)
    unknown = [c for c in categories if c not in SHAPES]
    if unknown or not categories:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {SYNTHETIC_CATEGORIES}")
    return categories


def _split_pairs(pairs_per_split: dict[str, int] | None, n_categories: int) -> dict[str, list[int]]:
    """Per split, the number of pairs for each category."""
    pairs = dict(DEFAULT_PAIRS_PER_SPLIT if pairs_per_split is None else pairs_per_split)
    if set(pairs) - set(SPLITS):
        raise ValueError(f"pairs_per_split keys must be among {SPLITS}, got {sorted(pairs)}")
    return {s: _share(int(pairs.get(s, 0)), n_categories) for s in SPLITS}


def _category_draws(seed: int, stream: str, dataset: str, categories: tuple[str, ...], images_per_category: int,
                    per_cat: dict[str, list[int]]):
    """Per category of a SPair / PF-Pascal layout: ``(category, drawn, pairs, pair_rng)``, ``drawn`` as :func:`_draw`
    gives it, ``pairs`` yielding ``(split, drawn[a], drawn[b])``. A split's pairs are drawn from ``pair_rng`` only
    when it is reached, so the writer may draw from it in between."""
    for ci, cat in enumerate(categories):
        counts = {s: per_cat[s][ci] for s in SPLITS}
        groups = _split_images(images_per_category, counts, f"generate_{dataset}")
        drawn = _draw(seed, stream, dataset, ci, cat, images_per_category)
        pair_rng = _rng(seed, stream, ci, 0, stream=1)
        pairs = ((split, drawn[a], drawn[b]) for split in SPLITS
                 for a, b in _choose_pairs(pair_rng, groups[split], counts[split]))
        yield cat, drawn, pairs, pair_rng


def _pair_flags(src: Instance, trg: Instance) -> dict[str, int]:
    ratio = max(src.size, trg.size) / max(min(src.size, trg.size), 1e-9)
    return {"viewpoint_variation": int(abs(src.angle - trg.angle) > 20), "scale_variation": int(ratio > 1.5),
            "truncation": int(src.truncated or trg.truncated), "occlusion": int(src.occluded or trg.occluded)}


def _r(values) -> list:
    """Round coordinates to 2 decimals for the annotation files (JSON ``null`` for NaN)."""
    return [None if not np.isfinite(v) else round(float(v), 2) for v in np.asarray(values).reshape(-1)]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_csv(path: Path, rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _save_mat(path: Path, variables: dict) -> None:
    """``scipy.io.savemat`` with the header's creation timestamp replaced, so the bytes depend on data only."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by sd4match synthetic".ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


@contextmanager
def _atomic_dir(final: Path):
    """Yield a fresh temporary sibling of ``final``; on success it replaces ``final`` by renaming."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generate_spair(root: str | Path, seed: int = 0, images_per_category: int = 12,
                   pairs_per_split: dict[str, int] | None = None,
                   categories: tuple[str, ...] = SYNTHETIC_CATEGORIES, stream: str = "spair") -> Path:
    """Write a synthetic dataset in the SPair-71k layout under ``root/SPair-71k`` and return that folder.

    Each category's images are split into disjoint trn / val / test groups; ``pairs_per_split`` (default
    :data:`DEFAULT_PAIRS_PER_SPLIT`) are shared evenly among the categories. Besides the SPair files, it writes
    ``ImageAnnotation/<cat>/<name>.json`` (``kps`` as ``{"0": [x, y] or null, ...}`` plus ``kp_names``).
    """
    categories = _check_categories(categories)
    per_cat = _split_pairs(pairs_per_split, len(categories))
    final = Path(root) / FOLDERS["spair"]
    with _atomic_dir(final) as out:
        lines: dict[str, list[str]] = {s: [] for s in SPLITS}
        for cat, drawn, pairs, _ in _category_draws(seed, stream, "spair", categories, images_per_category,
                                                    per_cat):
            kp_names = KEYPOINT_NAMES[cat]
            for name, inst in drawn:
                (out / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
                inst.image.save(out / "JPEGImages" / cat / f"{name}.jpg", quality=92)
                ann = {"filename": f"{name}.jpg", "src_database": "sd4match-synthetic", "category": cat,
                       "image_width": inst.image.width, "image_height": inst.image.height, "bndbox": _r(inst.bbox),
                       "kps": {str(k): (None if np.isnan(p[0]) else _r(p)) for k, p in enumerate(inst.kps)},
                       "kp_names": kp_names, "truncated": int(inst.truncated), "occluded": int(inst.occluded)}
                _write_text(out / "ImageAnnotation" / cat / f"{name}.json", json.dumps(ann))
            for split, (src_name, src), (trg_name, trg) in pairs:
                both = np.flatnonzero(~np.isnan(src.kps[:, 0]) & ~np.isnan(trg.kps[:, 0]))
                pair_id = len(lines[split]) + 1
                line = f"{pair_id:06d}-{src_name}-{trg_name}:{cat}"
                ann = {"pair_id": pair_id, "src_imname": f"{src_name}.jpg", "trg_imname": f"{trg_name}.jpg",
                       "category": cat, "src_imsize": [*src.image.size, 3], "trg_imsize": [*trg.image.size, 3],
                       "src_bndbox": _r(src.bbox), "trg_bndbox": _r(trg.bbox),
                       "src_kps": [_r(src.kps[k]) for k in both], "trg_kps": [_r(trg.kps[k]) for k in both],
                       "kps_ids": [int(k) for k in both], "kp_names": [kp_names[k] for k in both],
                       **_pair_flags(src, trg)}
                _write_text(out / "PairAnnotation" / split / f"{line}.json", json.dumps(ann))
                lines[split].append(line)
        for split in SPLITS:
            _write_text(out / "Layout" / "large" / f"{split}.txt", "".join(f"{ln}\n" for ln in lines[split]))
    return final


def generate_pfpascal(root: str | Path, seed: int = 0, images_per_category: int = 12,
                      pairs_per_split: dict[str, int] | None = None, flip_fraction: float = 0.3,
                      categories: tuple[str, ...] = SYNTHETIC_CATEGORIES) -> Path:
    """Write a synthetic dataset in the PF-Pascal layout under ``root/PF-Pascal`` and return that folder; about
    ``flip_fraction`` of the trn rows have ``flip = 1``."""
    categories = _check_categories(categories)  # every synthetic category is a PF-Pascal class
    per_cat = _split_pairs(pairs_per_split, len(categories))
    final = Path(root) / FOLDERS["pfpascal"]
    with _atomic_dir(final) as out:
        images = out / "PF-dataset-PASCAL" / "JPEGImages"
        images.mkdir(parents=True)
        rows: dict[str, list[list]] = {s: [] for s in SPLITS}
        for cat, drawn, pairs, pair_rng in _category_draws(seed, "pfpascal", "pfpascal", categories,
                                                           images_per_category, per_cat):
            for name, inst in drawn:
                inst.image.save(images / f"{name}.jpg", quality=92)
                _save_mat(out / "PF-dataset-PASCAL" / "Annotations" / cat / f"{name}.mat",
                          {"kps": np.round(inst.kps, 2), "bbox": np.round(inst.bbox, 2)[None, :], "class": cat})
            for split, (src_name, _), (trg_name, _) in pairs:
                row = [f"PF-dataset-PASCAL/JPEGImages/{src_name}.jpg", f"PF-dataset-PASCAL/JPEGImages/{trg_name}.jpg",
                       PFPASCAL_CLASSES.index(cat) + 1]
                if split == "trn":
                    row.append(int(pair_rng.random() < flip_fraction))
                rows[split].append(row)
        for split in SPLITS:
            header = ["source_image", "target_image", "class"] + (["flip"] if split == "trn" else [])
            _write_csv(out / f"{split}_pairs.csv", [header] + rows[split])
    return final


def generate_pfwillow(root: str | Path, seed: int = 0, images_per_subclass: int = 6, pairs_per_subclass: int = 10,
                      categories: tuple[str, ...] = SYNTHETIC_CATEGORIES) -> Path:
    """Write a synthetic dataset in the PF-Willow layout under ``root/PF-Willow`` and return that folder.

    One folder per real PF-Willow sub-class of the categories (:data:`WILLOW_SUBCLASSES`); instances are neither
    truncated nor occluded, so their first 10 keypoints are visible. Some PNGs are saved as RGBA or grayscale.
    """
    categories = _check_categories(categories)
    subclasses = [(cat, sub) for cat in categories for sub in WILLOW_SUBCLASSES.get(cat, ())]
    if not subclasses:
        raise ValueError(f"none of {categories} has a PF-Willow sub-class ({sorted(WILLOW_SUBCLASSES)})")
    if images_per_subclass * (images_per_subclass - 1) < pairs_per_subclass:
        raise ValueError(f"{images_per_subclass} images cannot give {pairs_per_subclass} distinct pairs")
    final = Path(root) / FOLDERS["pfwillow"]
    with _atomic_dir(final) as out:
        rows = [["imageA", "imageB"] + [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11)]]
        for si, (cat, sub) in enumerate(subclasses):
            clutter = (0, 0) if sub.endswith("(woC)") else (4, 10) if sub.endswith("(wC)") else (0, 6)
            (out / "PF-dataset" / sub).mkdir(parents=True)
            drawn = _draw(seed, "pfwillow", "pfwillow", si, cat, images_per_subclass, truncation=0.0,
                          occlusion=0.0, clutter=clutter)
            paths = [f"PF-dataset/{sub}/{cat}_{name}.png" for name, _ in drawn]
            for i, (path, (_, inst)) in enumerate(zip(paths, drawn)):
                assert not np.isnan(inst.kps[:10]).any()
                mode = {1: "RGBA", 3: "L"}.get(i % 4)  # some PNGs with alpha, some grayscale
                (inst.image.convert(mode) if mode else inst.image).save(out / path, compress_level=1)
            pair_rng = _rng(seed, "pfwillow", si, 0, stream=1)
            for a, b in _choose_pairs(pair_rng, range(images_per_subclass), pairs_per_subclass):
                values = np.concatenate([drawn[a][1].kps[:10].T, drawn[b][1].kps[:10].T]).ravel()
                rows.append([paths[a], paths[b]] + [f"{v:.2f}" for v in values])
        _write_csv(out / "test_pairs.csv", rows)
    return final


_GENERATORS = {"spair": generate_spair, "pfpascal": generate_pfpascal, "pfwillow": generate_pfwillow}


def test_split_settings(test_pairs: int, categories: tuple[str, ...] = SYNTHETIC_CATEGORIES) -> dict:
    """Generator settings for a test split of ``test_pairs`` pairs in every layout (train and validation as by
    default), with enough images per category (PF-Willow: per sub-class) to draw them from disjoint images."""
    if test_pairs < 1:
        raise ValueError(f"test_pairs must be positive, got {test_pairs}")
    pairs = dict(DEFAULT_PAIRS_PER_SPLIT, test=int(test_pairs))
    per_cat = _split_pairs(pairs, len(categories))
    images = max(12, max(sum(_images_for(per_cat[s][ci]) for s in SPLITS) for ci in range(len(categories))))
    n_sub = sum(len(WILLOW_SUBCLASSES.get(c, ())) for c in categories)
    per_sub = math.ceil(test_pairs / max(n_sub, 1))
    return {"pairs_per_split": pairs, "images_per_category": images, "pairs_per_subclass": per_sub,
            "images_per_subclass": max(6, _images_for(per_sub))}


def generate_all(root: str | Path, seed: int = 0, **kw) -> dict[str, Path]:
    """Write all three formats under ``root``; each keyword goes to the generators that accept it
    (``test_pairs=N`` stands for :func:`test_split_settings`).

    Returns ``{"spair": root/SPair-71k, "pfpascal": root/PF-Pascal, "pfwillow": root/PF-Willow}``.
    """
    test_pairs = kw.pop("test_pairs", None)
    if test_pairs is not None:
        kw = {**test_split_settings(test_pairs, kw.get("categories", SYNTHETIC_CATEGORIES)), **kw}
    accepted = {name: set(inspect.signature(fn).parameters) - {"root", "seed"} for name, fn in _GENERATORS.items()}
    unknown = set(kw) - set().union(*accepted.values())
    if unknown:
        raise TypeError(f"unknown synthetic-data settings {sorted(unknown)}")
    return {name: fn(root, seed, **{k: v for k, v in kw.items() if k in accepted[name]})
            for name, fn in _GENERATORS.items()}


def ensure_synthetic(root: str | Path, seed: int = 0, **kw) -> dict[str, Path]:
    """Like :func:`generate_all`, but only when ``root/synthetic.json`` does not already record the same
    generator version, seed and settings (and the three folders exist). Safe to call at every start-up."""
    root = Path(root)
    marker = root / "synthetic.json"
    wanted = {"generator_version": GENERATOR_VERSION, "seed": int(seed),
              "settings": json.loads(json.dumps(kw, sort_keys=True))}
    paths = {name: root / folder for name, folder in FOLDERS.items()}
    if read_json(marker) == wanted and all(p.is_dir() for p in paths.values()):
        return paths
    paths = generate_all(root, seed, **kw)
    atomic_write_text(marker, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    return paths
