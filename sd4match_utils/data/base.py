"""The pair record every loader yields (:class:`PairSample`), the error every loader raises, the dataset base class
(:class:`PairDataset`) and shared validation helpers.

Coordinates are ``(x, y)`` in pixels. ``*_kps`` are in the original image, ``*_kps_r`` in the image resized
to ``img_size × img_size`` without keeping the aspect ratio (SPEC §2): ``x_r = x · S / W``, ``y_r = y · S / H``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: The resolution the paper resizes every image to (SPEC §2).
DEFAULT_IMG_SIZE = 768
#: The splits of SPair-71k, PF-Pascal and custom data (PF-Willow has only ``test``).
SPLITS = ("trn", "val", "test")


class DatasetFormatError(ValueError):
    """A dataset file is missing or malformed. The message names the file and what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def scale_points(kps: np.ndarray, size_wh: tuple[int, int], img_size: int) -> np.ndarray:
    """Scale ``(N, 2)`` points from an image of ``size_wh = (W, H)`` to ``img_size × img_size``."""
    w, h = size_wh
    return np.asarray(kps, dtype=np.float64) * np.array([img_size / w, img_size / h])


def scale_box(box: np.ndarray, size_wh: tuple[int, int], img_size: int) -> np.ndarray:
    """Scale an ``[x1, y1, x2, y2]`` box from an image of ``size_wh = (W, H)`` to ``img_size × img_size``."""
    return scale_points(np.reshape(box, (2, 2)), size_wh, img_size).reshape(4)


def box_threshold(box: np.ndarray) -> float:
    """``max(w, h)`` of an ``[x1, y1, x2, y2]`` box: the PCK threshold of the bbox protocols (SPEC §7)."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return float(max(x2 - x1, y2 - y1))


def keypoint_box(kps: np.ndarray) -> np.ndarray:
    """The tight ``[x1, y1, x2, y2]`` box around ``(N, 2)`` keypoints (PF-Willow's threshold box)."""
    kps = np.asarray(kps, dtype=np.float64)
    return np.concatenate([kps.min(axis=0), kps.max(axis=0)])


@dataclass
class PairSample:
    """One annotated image pair.

    Attributes:
        pair_id: unique id within the split (SPair: the layout line; PF: ``"<row>"`` or a name pair).
        category: object category (PF-Willow: the sub-class such as ``"car(G)"``).
        src_image, trg_image: RGB PIL images, already mirrored when ``flip`` is true.
        src_kps, trg_kps: ``(N, 2)`` float64 keypoints in original pixels, only those visible in both.
        src_kps_r, trg_kps_r: the same in ``img_size`` space.
        src_bbox, trg_bbox: ``(4,)`` ``[x1, y1, x2, y2]`` in original pixels, or ``None`` when the format has none.
        thr: PCK threshold of the dataset's protocol in ``img_size`` space (SPEC §7).
        thr_orig: the same threshold measured in original target-image pixels.
        src_name, trg_name, src_path, trg_path: image ids (file stem) and files.
        flip: whether the pair was mirrored (PF-Pascal training rows with ``flip = 1``).
        kp_names: optional names of the keypoints (synthetic and custom data), length N.
        flags: extra per-pair annotations (SPair difficulty flags).
        skip_reason: why a pair with ``n_kps == 0`` cannot be evaluated, naming its annotation file.
    """

    pair_id: str
    category: str
    src_image: Image.Image
    trg_image: Image.Image
    src_kps: np.ndarray
    trg_kps: np.ndarray
    src_kps_r: np.ndarray
    trg_kps_r: np.ndarray
    src_bbox: np.ndarray | None
    trg_bbox: np.ndarray | None
    thr: float
    thr_orig: float
    src_name: str
    trg_name: str
    src_path: Path
    trg_path: Path
    flip: bool = False
    img_size: int = DEFAULT_IMG_SIZE
    kp_names: list[str] | None = None
    flags: dict = field(default_factory=dict)
    skip_reason: str | None = None

    @property
    def n_kps(self) -> int:
        return int(self.src_kps.shape[0])


def read_json(path: Path, missing: str = "annotation file not found"):
    """The decoded JSON of ``path``; a missing file (reported as ``missing``) or bad syntax raise
    :class:`DatasetFormatError`."""
    if not path.is_file():
        raise DatasetFormatError(path, missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetFormatError(path, f"malformed JSON ({exc})") from exc


def as_points(value, path: str | Path, what: str) -> np.ndarray:
    """Validate keypoints read from a file as a finite-or-NaN ``(N, 2)`` float64 array (``N`` may be 0)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(path, f"{what} is not a list of [x, y] numbers ({exc})") from exc
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetFormatError(path, f"{what} must have shape (N, 2), got {arr.shape}")
    return arr


def as_box(value, path: str | Path, what: str) -> np.ndarray:
    """Validate an ``[x1, y1, x2, y2]`` box (any shape holding 4 numbers, e.g. MATLAB's 1×4) as ``(4,)`` float64."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(path, f"{what} is not 4 numbers ({exc})") from exc
    if arr.shape != (4,) or not np.all(np.isfinite(arr)):
        raise DatasetFormatError(path, f"{what} must be 4 finite numbers [x1, y1, x2, y2], got {arr.tolist()}")
    return arr


def check_inside(kps: np.ndarray, size_wh: tuple[int, int], path: str | Path, what: str) -> None:
    """Raise when one of ``(N, 2)`` keypoints lies more than 1 pixel outside its ``(W, H)`` image
    (``-1 <= x <= W``, ``-1 <= y <= H`` pass: annotations are often 1-based or on the last pixel's edge)."""
    w, h = size_wh
    bad = ~((kps[:, 0] >= -1) & (kps[:, 0] <= w) & (kps[:, 1] >= -1) & (kps[:, 1] <= h))
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        x, y = kps[k]
        raise DatasetFormatError(path, f"{what} keypoint {k} at ({x:g}, {y:g}) lies outside the {w}x{h} image")


@dataclass
class PairEntry:
    """The cheap index record of one pair (no image opened). Loaders subclass it with their own fields."""

    pair_id: str
    category: str
    src_path: Path
    trg_path: Path


class PairDataset:
    """A split of annotated pairs; ``dataset[i]`` loads the images and returns a :class:`PairSample`.

    Subclasses set ``name``, fill ``self.entries`` and ``self.categories`` (sorted) in ``__init__``, and implement
    ``_load(entry) -> PairSample``.
    """

    name: str = ""

    def __init__(self, root: str | Path, split: str, img_size: int = DEFAULT_IMG_SIZE):
        self.root = Path(root)
        self.split = split
        self.img_size = int(img_size)
        if not self.root.is_dir():
            raise DatasetFormatError(self.root, f"{self.name} root folder not found")
        self.entries: list[PairEntry] = []
        self.categories: list[str] = []

    def _folder(self, name: str, what: str) -> Path:
        """The sub-folder ``name`` of the root, which must exist."""
        path = self.root / name
        if not path.is_dir():
            raise DatasetFormatError(path, f"{what} not found")
        return path

    def _split_file(self, *candidates: Path, note: str = "") -> Path:
        """The first existing file of ``candidates`` (else an error naming the first, with ``note`` appended)."""
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DatasetFormatError(candidates[0], f"split file for split {self.split!r} not found{note}")
        return found

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> PairSample:
        n = len(self.entries)
        if not -n <= i < n:
            raise IndexError(f"pair index {i} out of range for {n} pairs")
        return self._load(self.entries[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _load(self, entry: PairEntry) -> PairSample:
        raise NotImplementedError

    @property
    def pair_ids(self) -> list[str]:
        return [e.pair_id for e in self.entries]

    def category_of(self, i: int) -> str:
        """The category of pair ``i`` without opening anything."""
        return self.entries[i].category

    def spread_pairs(self, n_pairs: int) -> list[int]:
        """Indices of up to ``n_pairs`` distinct pairs, round-robin over :attr:`categories` (each category's pairs
        in file order). Deterministic; opens no image."""
        if n_pairs < 1:
            raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
        by_cat: dict[str, list[int]] = {}
        for i in range(len(self)):
            by_cat.setdefault(self.category_of(i), []).append(i)
        order = [c for c in self.categories if c in by_cat] + sorted(set(by_cat) - set(self.categories))
        rounds = itertools.zip_longest(*(by_cat[c] for c in order))
        return [i for row in rounds for i in row if i is not None][:n_pairs]

    def category_images(self, category: str, n: int) -> list[Image.Image]:
        """Up to ``n`` distinct images of one category, from its pairs in file order (source first)."""
        images: dict[Path, Image.Image] = {}
        for i in range(len(self)):
            if len(images) >= n:
                break
            if self.category_of(i) == category:
                sample = self[i]
                for path, image in ((sample.src_path, sample.src_image), (sample.trg_path, sample.trg_image)):
                    if len(images) < n:
                        images.setdefault(path, image)
        if not images:
            raise ValueError(f"no pair of category {category!r} in {self!r}")
        return list(images.values())

    def image_paths(self) -> list[Path]:
        """Sorted unique image files used by this split."""
        return sorted({p for e in self.entries for p in (e.src_path, e.trg_path)})

    def _sample(self, entry: PairEntry, src_image: Image.Image, trg_image: Image.Image, src_kps: np.ndarray,
                trg_kps: np.ndarray, src_bbox: np.ndarray | None, trg_bbox: np.ndarray | None, thr: float,
                thr_orig: float, **extra) -> PairSample:
        """Assemble a :class:`PairSample`, computing the ``img_size``-space keypoints from the image sizes."""
        return PairSample(
            pair_id=entry.pair_id, category=entry.category, src_image=src_image, trg_image=trg_image,
            src_kps=src_kps, trg_kps=trg_kps,
            src_kps_r=scale_points(src_kps, src_image.size, self.img_size).reshape(-1, 2),
            trg_kps_r=scale_points(trg_kps, trg_image.size, self.img_size).reshape(-1, 2),
            src_bbox=src_bbox, trg_bbox=trg_bbox, thr=float(thr), thr_orig=float(thr_orig),
            src_name=entry.src_path.stem, trg_name=entry.trg_path.stem,
            src_path=entry.src_path, trg_path=entry.trg_path, img_size=self.img_size, **extra)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"pairs={len(self)}, categories={len(self.categories)}, img_size={self.img_size})")
