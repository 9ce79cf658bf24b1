"""PF-Willow exactly as distributed (SPEC §8), ``test`` split only. Layout under the root::

    test_pairs.csv                       header row, then: imageA, imageB, 10 x of A, 10 y of A, 10 x of B, 10 y of B
    PF-dataset/<subclass>/<name>.png     subclass such as car(G), winebottle(wC)

Every keypoint is visible in both images. The format has no boxes: the tight box around the keypoints stands in,
and the PCK threshold is ``max(w, h)`` of that box around the resized *target* keypoints (SPEC §7).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .base import (DEFAULT_IMG_SIZE, DatasetFormatError, PairDataset, PairEntry, PairSample, box_threshold,
                   check_inside, keypoint_box, scale_points)
from .images import load_rgb

N_KPS = 10
N_COLUMNS = 2 + 4 * N_KPS


@dataclass
class PFWillowEntry(PairEntry):
    src_kps: np.ndarray  # (10, 2) original pixels
    trg_kps: np.ndarray  # (10, 2)
    line: int


class PFWillowDataset(PairDataset):
    """PF-Willow's test split. The CSV (keypoints included) is parsed at construction; images per item."""

    name = "pfwillow"

    def __init__(self, root: str | Path, split: str = "test", img_size: int = DEFAULT_IMG_SIZE):
        super().__init__(root, split, img_size)
        self.data_dir = self._folder("PF-dataset", "PF-Willow data folder")
        self.csv_path = self._split_file(self.root / f"{split}_pairs.csv", note=" (PF-Willow has only 'test')")
        with self.csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        if not rows or len(rows[0]) != N_COLUMNS:
            raise DatasetFormatError(self.csv_path, f"header must have {N_COLUMNS} columns (imageA, imageB, "
                                                    f"40 coordinates), found {len(rows[0]) if rows else 0}")
        for row, record in enumerate(rows[1:]):
            lineno = row + 2
            if not any(v.strip() for v in record):
                continue
            if len(record) != N_COLUMNS:
                raise DatasetFormatError(self.csv_path, f"line {lineno}: {len(record)} columns, expected {N_COLUMNS}")
            try:
                coords = np.array([float(v) for v in record[2:]])
            except ValueError as exc:
                raise DatasetFormatError(self.csv_path, f"line {lineno}: non-numeric coordinate ({exc})") from exc
            if not np.isfinite(coords).all():
                raise DatasetFormatError(self.csv_path, f"line {lineno}: coordinates must be finite")
            src_kps, trg_kps = coords.reshape(2, 2, N_KPS).transpose(0, 2, 1)
            trg_box = keypoint_box(trg_kps)
            if box_threshold(trg_box) <= 0:
                raise DatasetFormatError(self.csv_path, f"line {lineno}: the target keypoints are all at one point, "
                                                        f"their box {trg_box.tolist()} is empty: the PCK threshold "
                                                        f"max(w, h) would be 0")
            (src_path, category), (trg_path, trg_category) = (self._resolve(v, lineno) for v in record[:2])
            if trg_category != category:
                raise DatasetFormatError(self.csv_path, f"line {lineno}: images of different sub-classes "
                                                        f"({category!r}, {trg_category!r})")
            self.entries.append(PFWillowEntry(
                pair_id=f"{row:05d}-{src_path.stem}-{trg_path.stem}", category=category, src_path=src_path,
                trg_path=trg_path, src_kps=src_kps, trg_kps=trg_kps, line=lineno))
        self.categories = sorted({e.category for e in self.entries})

    def _resolve(self, value: str, lineno: int) -> tuple[Path, str]:
        """``"PF-dataset/car(G)/car_001.png"`` → (its path under the root, ``"car(G)"``)."""
        rel = PurePosixPath(value.strip().replace("\\", "/"))
        if len(rel.parts) < 2:
            raise DatasetFormatError(self.csv_path, f"line {lineno}: image path {value!r} lacks its sub-class folder")
        path = self.root / rel
        if not path.is_file():  # tolerate other prefixes: the sub-class folder and the file name are what count
            path = self.data_dir / rel.parent.name / rel.name
        return path, rel.parent.name

    def _load(self, entry: PFWillowEntry) -> PairSample:
        src_image, trg_image = load_rgb(entry.src_path), load_rgb(entry.trg_path)
        where = f"line {entry.line}, "
        check_inside(entry.src_kps, src_image.size, self.csv_path, where + f"source ({entry.src_path.name})")
        check_inside(entry.trg_kps, trg_image.size, self.csv_path, where + f"target ({entry.trg_path.name})")
        trg_kps_r = scale_points(entry.trg_kps, trg_image.size, self.img_size)
        return self._sample(entry, src_image, trg_image, entry.src_kps.copy(), entry.trg_kps.copy(),
                            keypoint_box(entry.src_kps), keypoint_box(entry.trg_kps),
                            thr=box_threshold(keypoint_box(trg_kps_r)),
                            thr_orig=box_threshold(keypoint_box(entry.trg_kps)))
