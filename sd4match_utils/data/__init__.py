"""The three benchmark formats (SPair-71k, PF-Pascal, PF-Willow) exactly as distributed, and the embedded
synthetic generator that writes the same formats.

>>> ds = load_dataset("spair", "data/SPair-71k", "test")      # doctest: +SKIP
>>> sample = ds[0]                                             # PairSample, images loaded here
"""

from __future__ import annotations

from pathlib import Path

from .base import DEFAULT_IMG_SIZE, DatasetFormatError, PairDataset, PairSample
from .images import image_size, load_rgb, to_rgb
from .pfpascal import PFPASCAL_CLASSES, PFPascalDataset
from .pfwillow import PFWillowDataset
from .spair import SPairDataset
from .synthetic import (KEYPOINT_NAMES, SYNTHETIC_CATEGORIES, ensure_synthetic, generate_all, generate_pfpascal,
                        generate_pfwillow, generate_spair)

DATASETS = ("spair", "pfpascal", "pfwillow")
#: The splits each dataset distributes.
SPLITS = {"spair": ("trn", "val", "test"), "pfpascal": ("trn", "val", "test"), "pfwillow": ("test",)}
_LOADERS = {"spair": SPairDataset, "pfpascal": PFPascalDataset, "pfwillow": PFWillowDataset}
_ALIASES = {"spair-71k": "spair", "spair71k": "spair", "pf-pascal": "pfpascal", "pf-willow": "pfwillow"}


def load_dataset(name: str, root: str | Path, split: str, img_size: int = DEFAULT_IMG_SIZE) -> PairDataset:
    """Open one split of a dataset.

    Args:
        name: ``"spair"``, ``"pfpascal"`` or ``"pfwillow"`` (case-insensitive; ``"SPair-71k"``, ``"PF-Pascal"``,
            ``"PF-Willow"`` also accepted).
        root: SPair: the ``SPair-71k`` folder; PF-Pascal: the folder holding ``PF-dataset-PASCAL/`` and the pair
            CSVs; PF-Willow: the folder holding ``PF-dataset/`` and ``test_pairs.csv``.
        split: ``"trn"``, ``"val"`` or ``"test"`` (PF-Willow: ``"test"`` only).
        img_size: side of the square resized image the ``*_r`` keypoints and ``thr`` refer to.

    Raises:
        ValueError: unknown dataset name.
        DatasetFormatError: missing or malformed files (the message names the file).
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    return _LOADERS[key](root, split, img_size)


__all__ = [
    "DATASETS", "DEFAULT_IMG_SIZE", "KEYPOINT_NAMES", "PFPASCAL_CLASSES", "SPLITS", "SYNTHETIC_CATEGORIES",
    "DatasetFormatError", "PFPascalDataset", "PFWillowDataset", "PairDataset", "PairSample", "SPairDataset",
    "ensure_synthetic", "generate_all", "generate_pfpascal", "generate_pfwillow", "generate_spair", "image_size",
    "load_dataset", "load_rgb", "to_rgb",
]
