"""A notebook run: where its data and outputs are, what its files are called, and what it records.

:class:`NotebookRun` is what every notebook shares: its papermill parameters, an output folder, the embedded
synthetic data when no dataset root is given, a progress switch (``TQDM_DISABLE``) and a metrics JSON with the
parameters, the model's identity, the elapsed time and the library versions.

>>> run = NotebookRun("01_feature_extraction_per_layer", dict(model="mini"), out_dir="../figures")  # doctest: +SKIP
>>> root, synthetic = run.dataset_root("spair", "")                  # "" → the embedded synthetic data
>>> names = run.names(("pca", "similarity"), "mini", "spair", synthetic)   # {"pca": ../figures/01_pca_mini_…}
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .cache import atomic_write_json, read_json
from .data import resolve_root
from .models import set_threads

__all__ = ["SUMMARY_COLUMNS", "NotebookRun", "dataset_tag", "model_tag", "output_name", "provenance", "records",
           "safe_name", "show_progress", "training_curves", "training_table"]


def safe_name(text: str) -> str:
    """``text`` with runs of characters outside ``[A-Za-z0-9._-]`` as ``-``, no leading / trailing ``-`` or ``.``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")


def model_tag(model: str) -> str:
    """A short file-system-safe tag for a model: ``"tiny"`` → ``"tiny"``; a hub id ``"owner/name"`` →
    ``"owner--name"``; a local folder → its folder name."""
    model = str(model).strip()
    if not model:
        raise ValueError("model must not be empty")
    path = Path(model).expanduser()
    if path.is_dir() or model.startswith((".", "/", "~")):
        model = path.resolve().name or "model"
    return safe_name(model.replace("/", "--")) or "model"


def dataset_tag(dataset: str, synthetic: bool) -> str:
    """``"spair"`` or, for the embedded generated data, ``"spair-synthetic"`` (so a figure made on generated
    images is never mistaken for one made on the benchmark)."""
    name = safe_name(str(dataset).strip().lower())
    if not name:
        raise ValueError("dataset must not be empty")
    return f"{name}-synthetic" if synthetic else name


def output_name(prefix: str, what: str, model: str, dataset: str, synthetic: bool, suffix: str = ".png") -> str:
    """``<prefix>_<what>_<model-tag>_<dataset-tag><suffix>``, e.g. ``01_pca_tiny_spair-synthetic.png``."""
    return f"{prefix}_{what}_{model_tag(model)}_{dataset_tag(dataset, synthetic)}{suffix}"


def show_progress() -> bool:
    """Whether progress bars are wanted: not when ``TQDM_DISABLE`` is set (headless papermill runs)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in {"1", "true", "yes"}


def provenance() -> dict:
    """Package and library versions, machine and date."""
    import diffusers
    import transformers

    return {"sd4match_version": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.platform(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready records of a table: Python numbers and strings, NaN → ``None``."""
    def clean(v):
        v = v.item() if isinstance(v, np.generic) else v
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return [{str(k): clean(v) for k, v in row.items()} for row in frame.to_dict("records")]


class NotebookRun:
    """The shared set-up and bookkeeping of one notebook execution.

    Args:
        notebook: the notebook's name, e.g. ``"01_feature_extraction_per_layer"`` (its number prefixes the files).
        parameters: the papermill parameters as given (recorded under ``settings``).
        cpu_threads: torch CPU threads (0 keeps torch's default).
        synthetic_root: where the embedded synthetic data is generated (or reused).
    """

    def __init__(self, notebook: str, parameters: Mapping, out_dir: str | Path = "../figures", cpu_threads: int = 0,
                 synthetic_root: str | Path = "../data/synthetic"):
        self.notebook, self.prefix = notebook, notebook.split("_")[0]
        self.parameters = dict(parameters)
        self.out = Path(out_dir)
        self.synthetic_root = Path(synthetic_root)
        self.progress = show_progress()
        self.started = time.perf_counter()
        if cpu_threads:
            set_threads(cpu_threads)

    def dataset_root(self, dataset: str, data_root: str | Path = "") -> tuple[Path, bool]:
        """``(root, synthetic)`` of ``dataset`` (:func:`~sd4match_utils.data.resolve_root`): an empty ``data_root`` is
        the embedded synthetic data, generated on first use; ``ValueError`` for an unknown dataset."""
        return resolve_root(dataset, data_root, self.synthetic_root)

    def names(self, whats: Iterable[str], model: str, dataset: str, synthetic: bool,
              suffix: str = ".png") -> dict[str, Path]:
        """``{what: out_dir / output_name(...)}`` for each output, plus ``"metrics"`` (``.json``)."""
        names = {w: self.out / output_name(self.prefix, w, model, dataset, synthetic, suffix) for w in whats}
        names["metrics"] = self.out / output_name(self.prefix, "metrics", model, dataset, synthetic, ".json")
        return names

    def write_metrics(self, path: str | Path, body: Mapping, sd=None, figures: Mapping | None = None) -> Path:
        """Write ``body`` as JSON (atomically) with the notebook's name, its parameters (merged under
        ``settings`` with ``body["settings"]``), the model's identity, the figures' file names, the elapsed time
        and :func:`provenance`."""
        metrics = {"notebook": self.notebook, **body, "settings": {**self.parameters, **body.get("settings", {})}}
        if sd is not None:
            metrics["model"] = sd.identity
        if figures is not None:
            metrics["figures"] = {k: Path(v).name for k, v in figures.items() if k != "metrics"}
        metrics["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        metrics["provenance"] = provenance()
        atomic_write_json(Path(path), metrics)
        return Path(path)


#: Columns of :func:`training_table` (from each run's ``summary.json``; PCK in percent, validation nn-PCK@0.1).
SUMMARY_COLUMNS = ("run", "reused", "steps", "total_steps", "val_pck_before", "val_pck_last", "best_val_pck",
                   "best_step", "first_loss", "last_loss")


def training_table(runs: Mapping[str, str | Path], reused: Mapping[str, bool] | None = None) -> pd.DataFrame:
    """One row per run (``{label: folder}``): ``prompt`` then :data:`SUMMARY_COLUMNS` from its ``summary.json``;
    ``FileNotFoundError`` for a folder without a readable one."""
    rows = []
    for label, folder in runs.items():
        summary = read_json(Path(folder) / "summary.json")
        if summary is None:
            raise FileNotFoundError(f"{folder}: no readable summary.json (train the prompt first)")
        info = {**summary, "run": Path(folder).name, "reused": (reused or {}).get(label)}
        rows.append({"prompt": label, **{k: info.get(k) for k in SUMMARY_COLUMNS}})
    return pd.DataFrame(rows, columns=["prompt", *SUMMARY_COLUMNS])


def training_curves(runs: Mapping[str, str | Path]) -> pd.DataFrame:
    """Every run's ``log.csv`` (``{label: folder}``) stacked behind a ``prompt`` column (``loss`` is NaN on
    validation rows, ``val_pck`` on training rows)."""
    frames = []
    for label, folder in runs.items():
        frame = pd.read_csv(Path(folder) / "log.csv", dtype={"kind": str})
        frame.insert(0, "prompt", label)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["prompt"])
