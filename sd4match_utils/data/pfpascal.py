"""PF-Pascal exactly as distributed (SPEC §8). Layout under the root::

    {trn,val,test}_pairs.csv          source_image, target_image, class (1-based)[, flip]; or in PF-dataset-PASCAL/
    PF-dataset-PASCAL/JPEGImages/<name>.jpg
    PF-dataset-PASCAL/Annotations/<class>/<name>.mat   kps: K×2 with NaN rows for invisible, bbox: [x1, y1, x2, y2]

A keypoint is kept when visible in both images. Rows with ``flip = 1`` mirror both images, keypoints
(``x' = W − 1 − x``) and boxes. PCK threshold: ``max(H, W)`` of the resized target = ``img_size`` (SPEC §7).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import scipy.io
from PIL import Image

from .base import (DEFAULT_IMG_SIZE, DatasetFormatError, PairDataset, PairEntry, PairSample, as_box, as_points,
                   check_inside)
from .images import load_rgb

#: The 20 PASCAL VOC classes; the CSV's ``class`` column is a 1-based index into this tuple.
PFPASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_REQUIRED_COLUMNS = ("source_image", "target_image", "class")


@dataclass
class PFPascalEntry(PairEntry):
    src_ann: Path
    trg_ann: Path
    flip: bool


def _mirror(image: Image.Image, kps: np.ndarray, box: np.ndarray | None):
    """``(image, kps, box)`` mirrored horizontally: ``x' = W − 1 − x``."""
    w = image.width
    kps = np.array(kps, dtype=np.float64).reshape(-1, 2)
    kps[:, 0] = w - 1 - kps[:, 0]
    if box is not None:
        x1, y1, x2, y2 = box
        box = np.array([w - 1 - x2, y1, w - 1 - x1, y2], dtype=np.float64)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), kps, box


def _image_name(value: str) -> str:
    """The file name at the end of a CSV path (``.jpg`` appended when it has no extension)."""
    name = PurePosixPath(value.strip().replace("\\", "/")).name
    return name if PurePosixPath(name).suffix else f"{name}.jpg"


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(kps (K, 2) with NaN rows, bbox (4,) or None)`` from a PF-Pascal ``.mat`` file."""
    if not path.is_file():
        raise DatasetFormatError(path, "annotation file not found")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises many types (MatReadError, ValueError, TypeError, OSError...)
        raise DatasetFormatError(path, f"malformed .mat file ({type(exc).__name__}: {exc})") from exc
    if "kps" not in mat:
        raise DatasetFormatError(path, "missing variable 'kps'")
    return as_points(mat["kps"], path, "kps"), (as_box(mat["bbox"], path, "bbox") if "bbox" in mat else None)


def _parse_int(value: str | None, path: Path, lineno: int, column: str) -> int:
    """An integer CSV cell (``"8"`` or ``"8.0"``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise DatasetFormatError(path, f"line {lineno}: column {column!r} is not an integer ({value!r})")
    return int(number)


class PFPascalDataset(PairDataset):
    """One split (trn, val or test) of PF-Pascal. The CSV is read at construction; .mat files and images per item."""

    name = "pfpascal"

    def __init__(self, root: str | Path, split: str = "test", img_size: int = DEFAULT_IMG_SIZE):
        super().__init__(root, split, img_size)
        self.data_dir = self._folder("PF-dataset-PASCAL", "PF-Pascal data folder")
        name = f"{split}_pairs.csv"
        self.csv_path = csv_path = self._split_file(self.root / name, self.data_dir / name)
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in _REQUIRED_COLUMNS if c not in header]
            if missing:
                raise DatasetFormatError(csv_path, f"missing column(s) {missing} (header: {header})")
            for row, record in enumerate(reader):
                lineno = row + 2
                if None in record or any(v is None for v in record.values()):
                    raise DatasetFormatError(csv_path, f"line {lineno}: wrong number of columns")
                cls = _parse_int(record["class"], csv_path, lineno, "class")
                if not 1 <= cls <= len(PFPASCAL_CLASSES):
                    raise DatasetFormatError(csv_path, f"line {lineno}: class index {cls} outside "
                                                       f"1..{len(PFPASCAL_CLASSES)}")
                flip = _parse_int(record.get("flip") or "0", csv_path, lineno, "flip")
                if flip not in (0, 1):
                    raise DatasetFormatError(csv_path, f"line {lineno}: flip must be 0 or 1, got {flip}")
                category = PFPASCAL_CLASSES[cls - 1]
                names = [_image_name(record[c]) for c in ("source_image", "target_image")]
                src, trg = (Path(n).stem for n in names)
                ann = self.data_dir / "Annotations" / category
                self.entries.append(PFPascalEntry(
                    pair_id=f"{row:05d}-{src}-{trg}" + ("-flip" if flip else ""), category=category,
                    src_path=self.data_dir / "JPEGImages" / names[0], trg_path=self.data_dir / "JPEGImages" / names[1],
                    src_ann=ann / f"{src}.mat", trg_ann=ann / f"{trg}.mat", flip=bool(flip)))
        self.categories = sorted({e.category for e in self.entries})

    def _load(self, entry: PFPascalEntry) -> PairSample:
        src_kps, src_bbox = _read_mat(entry.src_ann)
        trg_kps, trg_bbox = _read_mat(entry.trg_ann)
        if len(src_kps) != len(trg_kps):
            raise DatasetFormatError(entry.trg_ann, f"{len(trg_kps)} keypoints but the source annotation "
                                                    f"{entry.src_ann.name} has {len(src_kps)}")
        visible = np.isfinite(src_kps).all(axis=1) & np.isfinite(trg_kps).all(axis=1)
        src_kps, trg_kps = src_kps[visible], trg_kps[visible]

        src_image, trg_image = load_rgb(entry.src_path), load_rgb(entry.trg_path)
        check_inside(src_kps, src_image.size, entry.src_ann, f"source ({entry.src_path.name})")
        check_inside(trg_kps, trg_image.size, entry.trg_ann, f"target ({entry.trg_path.name})")
        if entry.flip:
            src_image, src_kps, src_bbox = _mirror(src_image, src_kps, src_bbox)
            trg_image, trg_kps, trg_bbox = _mirror(trg_image, trg_kps, trg_bbox)
        skip = None if len(src_kps) else (f"no keypoint visible in both {entry.src_ann} and {entry.trg_ann} "
                                          f"(all NaN)")
        return self._sample(entry, src_image, trg_image, src_kps, trg_kps, src_bbox, trg_bbox,
                            thr=float(self.img_size), thr_orig=float(max(trg_image.size)), flip=entry.flip,
                            skip_reason=skip)
