"""SPair-71k exactly as distributed (SPEC §8). Layout under the ``SPair-71k`` root::

    Layout/large/{trn,val,test}.txt        one pair per line: 000001-2008_006481-2008_007698:aeroplane
    PairAnnotation/{split}/<line>.json     src_kps, trg_kps (visible in both), src_bndbox, trg_bndbox, flags, ...
    JPEGImages/<category>/<name>.jpg

PCK threshold: ``max(w, h)`` of the target box (SPEC §7); an empty or inverted target box is an error. A pair
without keypoints gets a ``skip_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import (DEFAULT_IMG_SIZE, DatasetFormatError, PairDataset, PairEntry, PairSample, as_box, as_points,
                   box_threshold, check_inside, read_json, scale_box)
from .images import load_rgb

#: Per-pair difficulty annotations copied into ``PairSample.flags`` when present.
FLAG_KEYS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
_REQUIRED_KEYS = ("src_kps", "trg_kps", "src_bndbox", "trg_bndbox")


@dataclass
class SPairEntry(PairEntry):
    json_path: Path


class SPairDataset(PairDataset):
    """One split of SPair-71k. The layout file is read at construction; JSON and images per item."""

    name = "spair"

    def __init__(self, root: str | Path, split: str = "test", img_size: int = DEFAULT_IMG_SIZE):
        super().__init__(root, split, img_size)
        self.split_file = layout = self._split_file(self.root / "Layout" / "large" / f"{split}.txt")
        categories = set()
        for lineno, raw in enumerate(layout.read_text(encoding="utf-8").splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            head, sep, category = line.rpartition(":")
            fields = head.split("-")
            if not sep or not category or len(fields) != 3 or not all(fields):
                raise DatasetFormatError(layout, f"line {lineno}: expected '<id>-<source>-<target>:<category>', "
                                                 f"got {line!r}")
            images = self.root / "JPEGImages" / category
            self.entries.append(SPairEntry(
                pair_id=line, category=category, src_path=images / f"{fields[1]}.jpg",
                trg_path=images / f"{fields[2]}.jpg", json_path=self.root / "PairAnnotation" / split / f"{line}.json"))
            categories.add(category)
        image_root = self.root / "JPEGImages"
        if image_root.is_dir():  # the full category list, identical for every split
            categories |= {d.name for d in image_root.iterdir() if d.is_dir()}
        self.categories = sorted(categories)

    def _load(self, entry: SPairEntry) -> PairSample:
        path = entry.json_path
        ann = read_json(path)
        if not isinstance(ann, dict):
            raise DatasetFormatError(path, f"malformed JSON: expected an object, got {type(ann).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in ann]
        if missing:
            raise DatasetFormatError(path, f"missing key(s) {missing}")
        if "category" in ann and ann["category"] != entry.category:
            raise DatasetFormatError(path, f"category {ann['category']!r} differs from the layout's {entry.category!r}")
        src_kps = as_points(ann["src_kps"], path, "src_kps")
        trg_kps = as_points(ann["trg_kps"], path, "trg_kps")
        if len(src_kps) != len(trg_kps):
            raise DatasetFormatError(path, f"{len(src_kps)} source keypoints but {len(trg_kps)} target keypoints")
        if not (np.isfinite(src_kps).all() and np.isfinite(trg_kps).all()):
            raise DatasetFormatError(path, "keypoints must be finite numbers")
        src_bbox = as_box(ann["src_bndbox"], path, "src_bndbox")
        trg_bbox = as_box(ann["trg_bndbox"], path, "trg_bndbox")
        if not (trg_bbox[2] > trg_bbox[0] and trg_bbox[3] > trg_bbox[1]):
            raise DatasetFormatError(path, f"trg_bndbox {trg_bbox.tolist()} is empty or inverted (need x2 > x1 and y2 "
                                           f"> y1): its PCK threshold max(w, h) would be {box_threshold(trg_bbox):g}")
        kp_names = ann.get("kp_names")
        if kp_names is not None and len(kp_names) != len(src_kps):
            raise DatasetFormatError(path, f"{len(kp_names)} kp_names for {len(src_kps)} keypoints")

        src_image, trg_image = load_rgb(entry.src_path), load_rgb(entry.trg_path)
        check_inside(src_kps, src_image.size, path, f"source ({entry.src_path.name})")
        check_inside(trg_kps, trg_image.size, path, f"target ({entry.trg_path.name})")
        return self._sample(
            entry, src_image, trg_image, src_kps, trg_kps, src_bbox, trg_bbox,
            thr=box_threshold(scale_box(trg_bbox, trg_image.size, self.img_size)), thr_orig=box_threshold(trg_bbox),
            kp_names=None if kp_names is None else [str(n) for n in kp_names],
            flags={k: ann[k] for k in FLAG_KEYS if k in ann},
            skip_reason=None if len(src_kps) else f"no keypoints in {path}")
