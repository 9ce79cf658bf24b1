"""Your own images: a folder of photos plus ``annotations.json`` (dataset name ``"custom"``).

``annotations.json`` (in the ``--data-root`` folder) is a JSON list with one object per image::

    [{"image": "screws/a.jpg", "category": "screw", "keypoints": {"head": [412.0, 80.5], "tip": [398, 610]},
      "bbox": [350, 40, 470, 640]},
     {"image": "screws/b.jpg", "category": "screw", "keypoints": {"head": [120, 95], "slot": [131, 90]}}]

Keys (no others are allowed): ``image`` (required) the path relative to the file's folder, ``/`` separators;
``category`` (required) pairs are formed inside a category, which needs at least 2 images, and ``--prompt text``
reads ``"a photo of a {category}"``; ``keypoints`` (required, may be ``{}``) named ``[x, y]`` in original pixels
(0-based, up to one pixel outside the image accepted), any subset of the category's names per image; ``bbox``
(optional) ``[x1, y1, x2, y2]`` in original pixels; ``split`` (optional) ``"trn"``, ``"val"`` or ``"test"``.

**Pairs**: inside each category and split, every ordered pair of two different images sharing a keypoint name
(both directions), with the names annotated in both in the source entry's order, sorted by (category, source path,
target path). **PCK threshold** (``thr`` in ``img_size`` space, ``thr_orig`` in original target pixels): the larger
side of the target's ``bbox``, else of the box around *all* the target image's keypoints; when that box is
degenerate, the whole image (``img_size``, ``max(W, H)`` in original pixels).

**Splits** are made by image inside each category: images with a ``split`` key go there, the others are ordered by
a seeded hash of (seed, category, path), independent of the entries' order, and dealt out: 6 or more images:
``max(2, round(0.2 n))`` to ``test``, as many to ``val``, the rest to ``trn``; 4 or 5: 2 to ``test``, the rest to
``trn`` and ``val`` reuses them; 2 or 3: every split uses all of them (nothing held out).

Mistakes raise :class:`~sd4match_utils.data.base.DatasetFormatError` naming the file, the entry (index and image)
and the problem.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import atomic_write_text
from .base import (DEFAULT_IMG_SIZE, SPLITS, DatasetFormatError, PairDataset, PairEntry, PairSample, box_threshold,
                   keypoint_box, read_json, scale_box)
from .images import image_size, load_rgb
from .render import render_instance
from .shapes import KEYPOINT_NAMES

#: Default name of the annotation file inside the root folder.
ANNOTATION_FILE = "annotations.json"
#: Keys an entry must have, and all the keys it may have.
REQUIRED_KEYS = ("image", "category", "keypoints")
ALLOWED_KEYS = ("image", "category", "keypoints", "bbox", "split")
#: Extensions the annotation helper lists as images.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

__all__ = ["ANNOTATION_FILE", "ALLOWED_KEYS", "Annotator", "CustomDataset", "ImageRecord", "assign_splits",
           "build_pairs", "check_entry", "format_annotations", "read_annotations", "resolve_annotation_file",
           "write_example"]


@dataclass
class ImageRecord:
    """One validated entry of ``annotations.json``: ``index`` in the file, ``image`` as written, its ``path`` on disk,
    ``keypoints`` ``{name: (2,) float64 [x, y]}`` in file order, ``size`` ``(W, H)`` from the image header."""

    index: int
    image: str
    path: Path
    category: str
    keypoints: dict[str, np.ndarray]
    bbox: np.ndarray | None
    size: tuple[int, int]
    split: str | None = None


@dataclass
class CustomEntry(PairEntry):
    src: ImageRecord = field(default=None)  # type: ignore[assignment]
    trg: ImageRecord = field(default=None)  # type: ignore[assignment]
    names: list[str] = field(default_factory=list)


def resolve_annotation_file(root: str | Path) -> tuple[Path, Path]:
    """``(folder, annotation file)`` for a root that is either the folder holding ``annotations.json`` or the
    JSON file itself (image paths are relative to the file's folder)."""
    root = Path(root).expanduser()
    if root.is_file() or (root.suffix.lower() == ".json" and root.parent.is_dir()):
        return root.parent, root
    if not root.is_dir():
        raise DatasetFormatError(root, "custom dataset root folder not found")
    return root, root / ANNOTATION_FILE


def _where(index: int, image) -> str:
    return f"entry {index} ({image!r})" if isinstance(image, str) else f"entry {index}"


def _number(value) -> float | None:
    """A finite float from a JSON number (``bool`` is not a number), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def check_entry(entry, index: int, ann_path: Path, folder: Path, check_image: bool = True) -> ImageRecord:
    """Validate entry ``index`` of the annotation file ``ann_path`` (image paths relative to ``folder``).

    ``check_image``: also read the image header (it exists, is readable and contains the keypoints and box).
    """
    if not isinstance(entry, dict):
        raise DatasetFormatError(ann_path, f"entry {index}: expected an object, got {type(entry).__name__}")
    image = entry.get("image")
    where = _where(index, image)

    def fail(problem: str):
        raise DatasetFormatError(ann_path, f"{where}: {problem}")

    unknown = sorted(set(entry) - set(ALLOWED_KEYS))
    if unknown:
        fail(f"unknown key(s) {unknown}; allowed keys are {list(ALLOWED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        fail(f"missing key(s) {missing}")
    for key, what in (("image", "a non-empty path string"), ("category", "a non-empty string")):
        if not isinstance(entry[key], str) or not entry[key].strip():
            fail(f"'{key}' must be {what}, got {entry[key]!r}")
    split = entry.get("split")
    if split is not None and split not in SPLITS:
        fail(f"'split' must be one of {list(SPLITS)}, got {split!r}")

    raw_kps = entry["keypoints"]
    if not isinstance(raw_kps, dict):
        fail(f"'keypoints' must be an object {{name: [x, y]}}, got {type(raw_kps).__name__}")
    keypoints: dict[str, np.ndarray] = {}
    for name, xy in raw_kps.items():
        if not isinstance(name, str) or not name.strip():
            fail(f"a keypoint has an empty or non-text name: {name!r}")
        if not isinstance(xy, (list, tuple)) or len(xy) != 2:
            fail(f"keypoint {name!r} must be [x, y], got {xy!r}")
        x, y = _number(xy[0]), _number(xy[1])
        if x is None or y is None:
            fail(f"keypoint {name!r} has a non-numeric or non-finite coordinate: {xy!r}")
        keypoints[name] = np.array([x, y], dtype=np.float64)

    bbox = None
    if entry.get("bbox") is not None:
        raw = entry["bbox"]
        values = [_number(v) for v in raw] if isinstance(raw, (list, tuple)) else []
        if len(values) != 4 or None in values:
            fail(f"'bbox' must be 4 finite numbers [x1, y1, x2, y2], got {raw!r}")
        bbox = np.array(values, dtype=np.float64)
        if not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
            fail(f"'bbox' {raw!r} must have x2 > x1 and y2 > y1")

    path = folder / image
    size = (0, 0)
    if check_image:
        if not path.is_file():
            fail(f"image file not found: {path}")
        try:
            size = image_size(path)
        except DatasetFormatError as exc:
            fail(f"unreadable image {path} ({exc.problem})")
        w, h = size
        for name, (x, y) in keypoints.items():
            if not (-1 <= x <= w and -1 <= y <= h):
                fail(f"keypoint {name!r} at ({x:g}, {y:g}) lies outside the {w}x{h} image")
        if bbox is not None and not (-1 <= bbox[0] and -1 <= bbox[1] and bbox[2] <= w + 1 and bbox[3] <= h + 1):
            fail(f"'bbox' {bbox.tolist()} lies outside the {w}x{h} image")
    return ImageRecord(index=index, image=image, path=path, category=entry["category"], keypoints=keypoints,
                       bbox=bbox, size=size, split=split)


def _entry_list(ann_path: Path, missing: str = "annotation file not found") -> list:
    data = read_json(ann_path, missing)
    if not isinstance(data, list):
        raise DatasetFormatError(ann_path, f"expected a JSON list of image entries, got {type(data).__name__}")
    return data


def read_annotations(root: str | Path, check_images: bool = True) -> list[ImageRecord]:
    """Read and validate a custom dataset's annotation file (``root``: its folder or the file itself): one
    :class:`ImageRecord` per entry, in file order. ``check_images``: also open every image's header."""
    folder, ann_path = resolve_annotation_file(root)
    data = _entry_list(ann_path, "annotation file not found (see sd4match_utils/data/custom.py for the format)")
    records: list[ImageRecord] = []
    seen: dict[str, int] = {}
    by_cat: dict[str, list[ImageRecord]] = {}
    for i, entry in enumerate(data):
        rec = check_entry(entry, i, ann_path, folder, check_images)
        key = Path(os.path.normpath(rec.image)).as_posix()
        if key in seen:
            raise DatasetFormatError(ann_path, f"{_where(i, rec.image)}: duplicate image, already listed as "
                                               f"entry {seen[key]}")
        seen[key] = i
        records.append(rec)
        by_cat.setdefault(rec.category, []).append(rec)
    for category, recs in by_cat.items():
        if len(recs) < 2:
            raise DatasetFormatError(ann_path, f"{_where(recs[0].index, recs[0].image)}: category {category!r} has "
                                               f"only 1 image; every category needs at least 2 to form pairs")
    return records


def assign_splits(records: list[ImageRecord], seed: int = 0) -> dict[str, tuple[str, ...]]:
    """The split(s) of every image: ``{image: ("trn",) | ("val",) | ("test",) | ("trn", "val") | SPLITS}``, by the
    rule of the module docstring, the order being ``sha256(f"{seed}:{category}:{image}")`` (a lone image: trn)."""
    out: dict[str, tuple[str, ...]] = {}
    free: dict[str, list[ImageRecord]] = {}
    for rec in records:
        if rec.split is not None:
            out[rec.image] = (rec.split,)
        else:
            free.setdefault(rec.category, []).append(rec)
    for category, recs in free.items():
        recs = sorted(recs, key=lambda r: hashlib.sha256(f"{seed}:{category}:{r.image}".encode()).hexdigest())
        n = len(recs)
        if n >= 6:
            k = max(2, round(0.2 * n))
            parts = [(recs[:k], ("test",)), (recs[k:2 * k], ("val",)), (recs[2 * k:], ("trn",))]
        elif n >= 4:
            parts = [(recs[:2], ("test",)), (recs[2:], ("trn", "val"))]
        elif n >= 2:
            parts = [(recs, SPLITS)]
        else:
            parts = [(recs, ("trn",))]
        out.update((rec.image, splits) for group, splits in parts for rec in group)
    return out


def build_pairs(records: list[ImageRecord], split: str,
                seed: int = 0) -> list[tuple[ImageRecord, ImageRecord, list[str]]]:
    """``(source, target, shared keypoint names)`` of every pair of ``split`` (see the module docstring)."""
    splits = assign_splits(records, seed)
    by_cat: dict[str, list[ImageRecord]] = {}
    for rec in records:
        if split in splits[rec.image]:
            by_cat.setdefault(rec.category, []).append(rec)
    pairs = []
    for category in sorted(by_cat):
        recs = sorted(by_cat[category], key=lambda r: r.image)
        for src, trg in itertools.permutations(recs, 2):
            names = [n for n in src.keypoints if n in trg.keypoints]
            if names:
                pairs.append((src, trg, names))
    return pairs


def _threshold(trg: ImageRecord, img_size: int) -> tuple[float, float]:
    """``(thr, thr_orig)`` of pairs with ``trg`` as target (module docstring)."""
    box = trg.bbox if trg.bbox is not None else keypoint_box(np.stack(list(trg.keypoints.values())))
    thr_orig = box_threshold(box)
    if thr_orig < 1.0:  # degenerate: the whole image
        return float(img_size), float(max(trg.size))
    return box_threshold(scale_box(box, trg.size, img_size)), thr_orig


class CustomDataset(PairDataset):
    """One split of a custom dataset (``root``: the folder holding ``annotations.json``, or that file; ``seed``:
    of the automatic split). The whole file is validated at construction, images are decoded per item.
    ``categories`` lists every category of the file, the same for every split so that Class prompts line up."""

    name = "custom"

    def __init__(self, root: str | Path, split: str = "test", img_size: int = DEFAULT_IMG_SIZE, seed: int = 0):
        folder, self.annotation_file = resolve_annotation_file(root)
        super().__init__(folder, split, img_size)
        if split not in SPLITS:
            raise DatasetFormatError(self.annotation_file, f"unknown split {split!r}; expected one of {list(SPLITS)}")
        self.seed = int(seed)
        self.records = read_annotations(self.annotation_file)
        self.categories = sorted({r.category for r in self.records})
        for src, trg, names in build_pairs(self.records, split, self.seed):
            self.entries.append(CustomEntry(pair_id=f"{src.image}>{trg.image}", category=src.category,
                                            src_path=src.path, trg_path=trg.path, src=src, trg=trg, names=names))

    def _load(self, entry: CustomEntry) -> PairSample:
        src_image, trg_image = load_rgb(entry.src_path), load_rgb(entry.trg_path)
        for rec, img in ((entry.src, src_image), (entry.trg, trg_image)):
            if img.size != rec.size:
                raise DatasetFormatError(self.annotation_file, f"{_where(rec.index, rec.image)}: image changed size "
                                                               f"since the annotations were read")
        src_kps = np.stack([entry.src.keypoints[n] for n in entry.names])
        trg_kps = np.stack([entry.trg.keypoints[n] for n in entry.names])
        thr, thr_orig = _threshold(entry.trg, self.img_size)
        return self._sample(entry, src_image, trg_image, src_kps, trg_kps, entry.src.bbox, entry.trg.bbox,
                            thr=thr, thr_orig=thr_orig, kp_names=list(entry.names))


def format_annotations(entries) -> str:
    """``annotations.json`` text for a list of entries: a JSON list with one entry per line (diff-friendly)."""
    if not entries:
        return "[]\n"
    return "[\n" + ",\n".join("  " + json.dumps(dict(e), ensure_ascii=False) for e in entries) + "\n]\n"


def write_example(folder: str | Path, seed: int = 0, categories: tuple[str, ...] = ("bottle", "car"),
                  images_per_category: int = 6, drop: float = 0.2) -> Path:
    """Write a small deterministic custom dataset of synthetic photos to ``folder`` and return its annotation file:
    ``<category>/<category>_<i>.png``, each with its box and its visible keypoints, each dropped with probability
    ``drop``."""
    folder = Path(folder)
    entries = []
    for c, category in enumerate(categories):
        if category not in KEYPOINT_NAMES:
            raise ValueError(f"unknown synthetic category {category!r}; choose from {sorted(KEYPOINT_NAMES)}")
        (folder / category).mkdir(parents=True, exist_ok=True)
        for i in range(images_per_category):
            rng = np.random.default_rng([seed, 7, c, i])
            inst = render_instance(category, rng, truncation=0.0, occlusion=0.2)
            rel = f"{category}/{category}_{i:02d}.png"
            inst.image.save(folder / rel)
            named = zip(KEYPOINT_NAMES[category], inst.kps)
            kps = {name: [round(float(x), 1), round(float(y), 1)] for name, (x, y) in named
                   if np.isfinite(x) and rng.random() >= drop}  # a hidden keypoint draws no number
            entries.append({"image": rel, "category": category, "keypoints": kps,
                            "bbox": [round(float(v), 1) for v in inst.bbox]})
    path = folder / ANNOTATION_FILE
    atomic_write_text(path, format_annotations(entries))
    return path


def _as_xy(xy) -> tuple[float, float]:
    try:
        x, y = xy
    except (TypeError, ValueError):
        raise ValueError(f"a point must be (x, y), got {xy!r}") from None
    x, y = _number(x), _number(y)
    if x is None or y is None:
        raise ValueError(f"a point must be two finite numbers, got {xy!r}")
    return x, y


class Annotator:
    """Named keypoints on a folder of images (in pixels of the original image), edited point by point and saved
    as ``folder/annotations.json`` (read back when it exists). Nothing is written until :meth:`save`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: image folder not found")
        self.path = self.folder / ANNOTATION_FILE
        self._entries: dict[str, dict] = {}
        if self.path.is_file():
            entries = _entry_list(self.path)
            for i, entry in enumerate(entries):  # each entry, not the dataset rules: a category may have 1 image
                check_entry(entry, i, self.path, self.folder)
            self._entries = {entry["image"]: entry for entry in entries}

    def images(self) -> list[str]:
        """Every image file under the folder, as sorted relative ``/`` paths."""
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and ".ipynb_checkpoints" not in p.parts)

    @property
    def entries(self) -> list[dict]:
        """Copies of the entries, in the order their images were first annotated."""
        return json.loads(json.dumps(list(self._entries.values())))

    def keypoints(self, image: str | Path) -> dict[str, tuple[float, float]]:
        entry = self._entries.get(self._rel(image))
        return {} if entry is None else {n: (xy[0], xy[1]) for n, xy in entry["keypoints"].items()}

    def category(self, image: str | Path) -> str | None:
        entry = self._entries.get(self._rel(image))
        return None if entry is None else entry["category"]

    def names(self, category: str | None = None) -> list[str]:
        """Keypoint names used so far (in a category, or anywhere), in first-use order."""
        seen: dict[str, None] = {}
        for e in self._entries.values():
            if category is None or e["category"] == category:
                seen.update(dict.fromkeys(e["keypoints"]))
        return list(seen)

    def _rel(self, image: str | Path) -> str:
        p = Path(image)
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(self.folder.resolve())
            except ValueError:
                raise ValueError(f"{image} is not inside {self.folder}") from None
        return p.as_posix()

    def _size(self, rel: str) -> tuple[int, int]:
        path = self.folder / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found")
        return image_size(path)

    def add_point(self, image: str | Path, name: str, xy, category: str | None = None) -> dict:
        """Place (or move) keypoint ``name`` of ``image`` at ``xy = (x, y)``; return a copy of the image's entry.
        ``category`` is required the first time an image is annotated (and changes it when given later)."""
        rel = self._rel(image)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a keypoint needs a non-empty name, got {name!r}")
        name = name.strip()
        x, y = _as_xy(xy)
        w, h = self._size(rel)
        if not (-1 <= x <= w and -1 <= y <= h):
            raise ValueError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} image {rel}")
        entry = self._entries.get(rel)
        if entry is None:
            if not category or not str(category).strip():
                raise ValueError(f"{rel} is not annotated yet: give its category")
            entry = self._entries[rel] = {"image": rel, "category": str(category).strip(), "keypoints": {}}
        elif category:
            entry["category"] = str(category).strip()
        entry["keypoints"][name] = [round(x, 2), round(y, 2)]
        return json.loads(json.dumps(entry))

    def remove_point(self, image: str | Path, name: str) -> bool:
        """Remove a keypoint; ``True`` when it existed. An image left without keypoints stays listed."""
        entry = self._entries.get(self._rel(image))
        return bool(entry) and entry["keypoints"].pop(name, None) is not None

    def set_category(self, image: str | Path, category: str) -> None:
        rel = self._rel(image)
        if not category or not str(category).strip():
            raise ValueError("category must be a non-empty string")
        self._size(rel)
        entry = self._entries.setdefault(rel, {"image": rel, "category": "", "keypoints": {}})
        entry["category"] = str(category).strip()

    def set_bbox(self, image: str | Path, bbox: Sequence[float] | None) -> None:
        """Set (or with ``None`` remove) the object box ``[x1, y1, x2, y2]`` of an annotated image."""
        rel = self._rel(image)
        entry = self._entries.get(rel)
        if entry is None:
            raise ValueError(f"{rel} is not annotated yet: add a point or a category first")
        if bbox is None:
            entry.pop("bbox", None)
            return
        x1, y1 = _as_xy(bbox[:2])
        x2, y2 = _as_xy(bbox[2:])
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"bbox {list(bbox)} must have x2 > x1 and y2 > y1")
        entry["bbox"] = [x1, y1, x2, y2]

    def to_json(self) -> str:
        return format_annotations(list(self._entries.values()))

    def save(self) -> Path:
        """Validate every entry (as the loader would), write the file atomically and return its path."""
        for i, entry in enumerate(self._entries.values()):
            check_entry(entry, i, self.path, self.folder)
        return atomic_write_text(self.path, self.to_json())
