"""The three benchmark formats (SPair-71k, PF-Pascal, PF-Willow) exactly as distributed, your own images
(``"custom"``: a folder plus ``annotations.json``, see :mod:`.custom`), and the embedded synthetic generator that
writes the benchmark formats.

>>> ds = load_dataset("spair", "data/SPair-71k", "test")      # doctest: +SKIP
>>> sample = ds[0]                                             # PairSample, images loaded here
"""

from __future__ import annotations

from pathlib import Path

from .base import DEFAULT_IMG_SIZE, DatasetFormatError, PairDataset, PairSample
from .custom import ANNOTATION_FILE, CustomDataset, read_annotations, write_example
from .images import image_size, load_rgb, to_rgb
from .pfpascal import PFPASCAL_CLASSES, PFPascalDataset
from .pfwillow import PFWillowDataset
from .spair import SPairDataset
from .synthetic import (KEYPOINT_NAMES, SYNTHETIC_CATEGORIES, ensure_synthetic, generate_all, generate_pfpascal,
                        generate_pfwillow, generate_spair)

#: The distributed benchmark formats (the ones the synthetic generator writes).
BENCHMARKS = ("spair", "pfpascal", "pfwillow")
#: Every dataset ``load_dataset`` (and the ``--dataset`` option) accepts: the benchmarks and your own images.
DATASETS = BENCHMARKS + ("custom",)
#: The splits each dataset distributes (custom: made from the annotation file, see :mod:`.custom`).
SPLITS = {"spair": ("trn", "val", "test"), "pfpascal": ("trn", "val", "test"), "pfwillow": ("test",),
          "custom": ("trn", "val", "test")}
_LOADERS = {"spair": SPairDataset, "pfpascal": PFPascalDataset, "pfwillow": PFWillowDataset,
            "custom": CustomDataset}
_ALIASES = {"spair-71k": "spair", "spair71k": "spair", "pf-pascal": "pfpascal", "pf-willow": "pfwillow"}


def load_dataset(name: str, root: str | Path, split: str, img_size: int = DEFAULT_IMG_SIZE) -> PairDataset:
    """Open one split of a dataset (:data:`DATASETS`, case-insensitive; ``"SPair-71k"``, ``"PF-Pascal"``,
    ``"PF-Willow"`` also accepted). ``root``: the folder holding the layout described in the dataset's module
    (custom: also the ``annotations.json`` file itself). Bad files raise :class:`DatasetFormatError` naming them.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    return _LOADERS[key](root, split, img_size)


def resolve_root(dataset: str, root: str | Path | None, synthetic_root: str | Path | None = None) -> tuple[Path, bool]:
    """``(root, synthetic)`` of one dataset: an empty ``root`` is the embedded synthetic data of a benchmark,
    generated under ``synthetic_root`` on first use; a given root whose parent holds the generator's
    ``synthetic.json`` counts as synthetic too, so numbers made on generated images are never labelled as benchmark
    numbers."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if root is not None and str(root).strip():
        root = Path(root).expanduser()
        return root, (root.parent / "synthetic.json").is_file()
    if dataset not in BENCHMARKS:
        raise ValueError(f"{dataset}: give its root folder (embedded synthetic data exists for {BENCHMARKS} only)")
    if synthetic_root is None:
        raise ValueError(f"{dataset}: empty root and no synthetic_root to generate the embedded data in")
    return Path(ensure_synthetic(Path(synthetic_root))[dataset]), True


__all__ = [
    "ANNOTATION_FILE", "BENCHMARKS", "CustomDataset", "DATASETS", "DEFAULT_IMG_SIZE", "KEYPOINT_NAMES",
    "PFPASCAL_CLASSES", "SPLITS", "SYNTHETIC_CATEGORIES", "DatasetFormatError", "PFPascalDataset",
    "PFWillowDataset", "PairDataset", "PairSample", "SPairDataset", "ensure_synthetic", "generate_all",
    "generate_pfpascal", "generate_pfwillow", "generate_spair", "image_size", "load_dataset", "load_rgb",
    "read_annotations", "resolve_root", "to_rgb", "write_example",
]
