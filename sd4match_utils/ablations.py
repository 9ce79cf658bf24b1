"""Prompt tuning and its ablations (notebook 02): train prompts, evaluate them, compare, sweep one axis at a time.

SD4Match learns only the prompt fed to the frozen UNet's cross-attention (SPEC §3, §5). This module holds the
sweep logic of notebook 02 and returns everything as tidy ``pandas`` tables:

* :func:`train_or_reuse` trains one prompt with :func:`~sd4match_utils.train.train` into a folder named after
  the settings (a readable prefix plus a hash of every setting that changes the result and of the model's
  fingerprint). A finished run found there is reused as is; an interrupted one is resumed from its checkpoint.
  So a notebook re-run, or two ablations that share a setting (the base value of each axis), train once.
* :class:`PromptEvaluator` evaluates fixed or learned prompts on the test split with one protocol
  (:class:`EvalProtocol`), computing each image's VAE latent once for all prompts and timesteps.
* :func:`evaluate_prompts` → the empty / text / Single / Class comparison; :func:`training_table` and
  :func:`training_curves` → validation PCK before and after training and the loss curves, read from each run's
  ``summary.json`` and ``log.csv``.
* :func:`run_ablation` trains one Single prompt per value of one axis (prompt length, initialisation, learning
  rate, training timestep) and evaluates each; the ``test_timestep`` axis evaluates the base prompt at several
  test timesteps without retraining.
* ``plot_*`` draw the notebook's figures (saved with :func:`~sd4match_utils.viz.save_figure`).

PCK is the paper's protocol (SPEC §7): resized space, ``per_image`` (the paper's number) and ``per_point``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .conditioning import FIXED_PROMPTS, Conditioning, make_conditioning
from .evaluate import predict
from .features import FeatureExtractor
from .metrics import ALPHAS, pck_records
from .train import TrainSettings, train
from .viz import save_figure

__all__ = [
    "AXES",
    "PCK_COLUMNS",
    "RUN_COLUMNS",
    "ABLATION_COLUMNS",
    "EvalProtocol",
    "PromptEvaluator",
    "canonical_axis",
    "run_key",
    "run_dir",
    "is_finished",
    "train_or_reuse",
    "prompt_path",
    "run_info",
    "training_table",
    "training_curves",
    "evaluate_prompts",
    "run_ablation",
    "ablation_view",
    "records",
    "plot_prompt_comparison",
    "plot_training",
    "plot_ablations",
]

#: Ablation axes → the :class:`~sd4match_utils.train.TrainSettings` field they vary (``None``: evaluation only).
AXES: dict[str, str | None] = {
    "length": "n_tokens",
    "init": "init",
    "lr": "lr",
    "train_timestep": "timestep",
    "test_timestep": None,
}
#: Other names accepted for the axes (the settings' own field names).
_AXIS_ALIASES = {"n_tokens": "length", "prompt_length": "length", "timestep": "train_timestep"}
#: Columns of the PCK tables (:meth:`PromptEvaluator.pck`, :func:`evaluate_prompts`).
PCK_COLUMNS = ("prompt", "timestep", "matcher", "averaging", "alpha", "pck", "n")
#: Columns describing one training run (:func:`run_info`, :func:`training_table`).
RUN_COLUMNS = ("run", "reused", "steps", "total_steps", "val_pck_before", "val_pck_last", "best_val_pck",
               "best_step", "first_loss", "last_loss")
#: Columns of :func:`run_ablation`'s table: one row per value × matcher × averaging × α.
ABLATION_COLUMNS = ("axis", "value", *RUN_COLUMNS, "timestep", "matcher", "averaging", "alpha", "pck", "n")
#: Settings that do not change what a run learns (left out of the run key; ``resume`` still checks them).
_KEY_EXCLUDED = ("save_every", "device", "gradient_checkpointing", "dino_cache")


@dataclass
class EvalProtocol:
    """How learned and fixed prompts are tested (the paper's: t = 50, 8 noise copies, all pairs, SPEC §2, §7).

    Attributes:
        split: the split evaluated.
        timestep: test diffusion step t (the ``test_timestep`` axis overrides it per value).
        ensemble: noise copies averaged per image.
        matchers: matchers from :data:`~sd4match_utils.matching.MATCHERS` (the paper reports ``kernel_softmax``).
        alphas: PCK thresholds α.
        limit: evaluate only the first ``limit`` pairs (``None``: all).
        layer: the up-block read out (1 in SD4Match).
        seed: feature seed (latent sample and noise).
        latent: ``"sample"`` (paper) or ``"mean"``.
        prompt_file: which prompt of a run is tested: ``"best"`` (best validation PCK, the paper's selection,
            possibly the untrained initial prompt) or ``"last"``.
        batch_size: rows (images × ensemble) per UNet call.
    """

    split: str = "test"
    timestep: int = 50
    ensemble: int = 8
    matchers: tuple[str, ...] = ("kernel_softmax", "nn")
    alphas: tuple[float, ...] = ALPHAS
    limit: int | None = None
    layer: int = 1
    seed: int = 0
    latent: str = "sample"
    prompt_file: str = "best"
    batch_size: int = 8

    def __post_init__(self):
        if self.prompt_file not in ("best", "last"):
            raise ValueError(f"prompt_file must be 'best' or 'last', got {self.prompt_file!r}")
        self.matchers = tuple(self.matchers)
        self.alphas = tuple(float(a) for a in self.alphas)


# --------------------------------------------------------------------------------------------------------------
# runs: naming, reuse, summaries
# --------------------------------------------------------------------------------------------------------------


def canonical_axis(axis: str) -> str:
    """The axis name used in tables (``"length"``, ``"init"``, ``"lr"``, ``"train_timestep"``, ``"test_timestep"``);
    the settings' field names ``"n_tokens"`` and ``"timestep"`` are accepted too.

    Raises:
        ValueError: an unknown axis.
    """
    name = _AXIS_ALIASES.get(str(axis), str(axis))
    if name not in AXES:
        raise ValueError(f"unknown ablation axis {axis!r}; expected one of {list(AXES)}")
    return name


def _resolved(settings: TrainSettings) -> TrainSettings:
    """The settings with an absolute ``data_root`` (so the same data gives the same key from any folder)."""
    return replace(settings, data_root=str(Path(settings.data_root).expanduser().resolve()))


def _effective(settings: TrainSettings | Mapping) -> dict:
    """The settings that define a run: ``data_root`` resolved, :data:`_KEY_EXCLUDED` dropped, and every field
    left at its :class:`TrainSettings` default dropped too (so a field added to ``TrainSettings`` later, with a
    default, neither renames old runs nor stops them from being reused)."""
    from .evaluate import apply_recommended
    from .models import ModelNotAvailableError, recommended_for, resolve_precision

    s = asdict(settings) if isinstance(settings, TrainSettings) else dict(settings)
    try:  # unset read-out settings mean the model's recommended ones, which the run records
        s = apply_recommended(s, recommended_for(s.get("model", "tiny")), timestep_key="train_timestep")
    except ModelNotAvailableError:
        pass
    if s.get("precision") == "auto":  # likewise "auto" means the precision it resolves to, which the run records
        s["precision"] = resolve_precision("auto", s.get("device", "cpu"), s.get("model"))
    defaults = {f.name: f.default for f in fields(TrainSettings) if f.default is not MISSING}
    out = {}
    for k, v in s.items():
        if k in _KEY_EXCLUDED or (k in defaults and v == defaults[k]):
            continue
        out[k] = str(Path(v).expanduser().resolve()) if k == "data_root" and v else v
    return out


def run_key(settings: TrainSettings, model_fingerprint: str = "") -> str:
    """A 12-hex-digit hash of the settings that change the learned prompt (see :func:`_effective`: all but
    ``save_every``, ``device``, ``gradient_checkpointing``, ``dino_cache``; ``data_root`` resolved) and of the
    model's weight fingerprint."""
    blob = json.dumps([_effective(settings), model_fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_dir(settings: TrainSettings, out_root: str | Path, model_fingerprint: str = "") -> Path:
    """``out_root/<type>_n<tokens>_<init>_lr<lr>_t<timestep>_<steps>_<key>``: readable and unique per run."""
    steps = f"s{settings.max_steps}" if settings.max_steps is not None else f"e{settings.epochs}"
    timestep = _effective(settings).get("timestep", settings.timestep)
    name = (f"{settings.prompt_type}_n{settings.n_tokens}_{settings.init}_lr{settings.lr:g}_t{timestep}"
            f"_{steps}_{run_key(settings, model_fingerprint)}")
    return Path(out_root) / name


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(folder: str | Path, settings: TrainSettings | None = None) -> bool:
    """Whether ``folder`` holds a completed run (``summary.json`` with ``steps ≥ total_steps`` and both prompt
    files), of ``settings`` when given (compared like :func:`run_key`)."""
    folder = Path(folder)
    summary = _read_json(folder / "summary.json")
    if not summary or summary.get("steps") is None or summary["steps"] < summary.get("total_steps", math.inf):
        return False
    if not all((folder / f"prompt_{w}.safetensors").is_file() for w in ("best", "last")):
        return False
    if settings is not None and _effective(summary.get("settings", {})) != _effective(settings):
        return False
    return True


def train_or_reuse(settings: TrainSettings, out_root: str | Path, sd, progress: bool = False) -> tuple[Path, bool]:
    """Train ``settings`` into :func:`run_dir` unless that run already finished there.

    An interrupted run in that folder (a checkpoint without a complete summary) is resumed, not restarted.

    Returns:
        ``(run folder, reused)``; ``reused`` is True when nothing was trained.
    """
    settings = _resolved(settings)
    folder = run_dir(settings, out_root, sd.identity.get("fingerprint", ""))
    if is_finished(folder, settings):
        return folder, True
    train(settings, folder, resume=True, sd=sd, progress=progress)
    return folder, False


def prompt_path(folder: str | Path, which: str = "best") -> Path:
    """``folder/prompt_best.safetensors`` or ``folder/prompt_last.safetensors``."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return Path(folder) / f"prompt_{which}.safetensors"


def run_info(folder: str | Path, reused: bool | None = None) -> dict:
    """One run's :data:`RUN_COLUMNS` from its ``summary.json`` (validation PCK before training, after the last
    step and the best one, in percent; first and last training loss)."""
    folder = Path(folder)
    summary = _read_json(folder / "summary.json")
    if summary is None:
        raise FileNotFoundError(f"{folder}: no readable summary.json (train the prompt first)")
    info = {"run": folder.name, "reused": reused}
    for k in RUN_COLUMNS[2:]:
        info[k] = summary.get(k)
    return info


def training_table(runs: Mapping[str, str | Path], reused: Mapping[str, bool] | None = None) -> pd.DataFrame:
    """Validation PCK before / after training for several runs.

    Args:
        runs: label (e.g. ``"single"``) → run folder.
        reused: label → whether the run was reused (optional).

    Returns:
        One row per run: ``prompt`` then :data:`RUN_COLUMNS`, plus ``val_gain`` = ``val_pck_last −
        val_pck_before`` (validation nn-PCK@0.1, per image, percent).
    """
    rows = [{"prompt": label, **run_info(folder, (reused or {}).get(label))} for label, folder in runs.items()]
    table = pd.DataFrame(rows, columns=["prompt", *RUN_COLUMNS])
    table["val_gain"] = pd.to_numeric(table["val_pck_last"]) - pd.to_numeric(table["val_pck_before"])
    return table


def training_curves(runs: Mapping[str, str | Path]) -> pd.DataFrame:
    """Every run's ``log.csv`` stacked: columns ``prompt, kind ("train" | "val"), step, epoch, loss, val_pck,
    seconds`` (``loss`` is NaN on validation rows, ``val_pck`` on training rows)."""
    frames = []
    for label, folder in runs.items():
        text = (Path(folder) / "log.csv").read_text(encoding="utf-8")
        frame = pd.DataFrame(list(csv.DictReader(io.StringIO(text))))
        if frame.empty:
            continue
        frame.insert(0, "prompt", label)
        frames.append(frame)
    columns = ["prompt", "kind", "step", "epoch", "loss", "val_pck", "seconds"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)[columns]
    for c in ("step", "epoch", "loss", "val_pck", "seconds"):
        out[c] = pd.to_numeric(out[c].replace("", np.nan))
    out["step"] = out["step"].astype(int)
    return out


# --------------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------------


class PromptEvaluator:
    """Test-split PCK of fixed and learned prompts under one :class:`EvalProtocol`.

    One :class:`~sd4match_utils.features.FeatureExtractor` per test timestep; they share one store of VAE latents
    (a latent does not depend on the timestep or the prompt), so each image goes through the VAE once.

    Args:
        sd: a loaded :class:`~sd4match_utils.models.SDModel`.
        dataset: dataset name (``"spair"``, ``"pfpascal"``, ``"pfwillow"``).
        data_root: its root folder.
        protocol: the test protocol.
        img_size: square resize; ``None`` = the model's native size. Must match the training ``img_size``.
    """

    def __init__(self, sd, dataset: str, data_root: str | Path, protocol: EvalProtocol | None = None,
                 img_size: int | None = None):
        from .data import load_dataset

        self.sd = sd
        self.protocol = protocol or EvalProtocol()
        self.img_size = int(img_size or sd.native_img_size)
        self.dataset = load_dataset(dataset, data_root, self.protocol.split, img_size=self.img_size)
        self._extractors: dict[int, FeatureExtractor] = {}
        self._latents: dict = {}

    @classmethod
    def for_settings(cls, sd, settings: TrainSettings, protocol: EvalProtocol | None = None) -> "PromptEvaluator":
        """The evaluator matching a training run's dataset, data root and image size."""
        return cls(sd, settings.dataset, settings.data_root, protocol, settings.img_size)

    def extractor(self, timestep: int) -> FeatureExtractor:
        """The (cached) extractor at ``timestep``; its latent store is shared with the others."""
        t = int(timestep)
        if t not in self._extractors:
            p = self.protocol
            fx = FeatureExtractor(self.sd, layers=(p.layer,), timestep=t, ensemble=p.ensemble, latent=p.latent,
                                  img_size=self.img_size, seed=p.seed, batch_size=p.batch_size)
            fx._latents = self._latents  # latent keys hold model, precision, latent mode, size, seed and image
            self._extractors[t] = fx
        return self._extractors[t]

    def conditioning(self, prompt):
        """``"text"`` / ``"empty"`` → fixed prompt; a :class:`~sd4match_utils.conditioning.Conditioning` (e.g. a
        :class:`~sd4match_utils.conditioning.LearnedPrompt`), a prompt file or a run folder (its
        ``prompt_<protocol.prompt_file>.safetensors``) → learned prompt."""
        if isinstance(prompt, Conditioning) or (isinstance(prompt, str) and prompt in FIXED_PROMPTS):
            return make_conditioning(self.sd, prompt)
        path = Path(prompt)
        if path.is_dir():
            path = prompt_path(path, self.protocol.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such prompt file (expected {FIXED_PROMPTS}, a prompt file or a "
                                    f"run folder)")
        return make_conditioning(self.sd, str(path))

    def predictions(self, prompt, timestep: int | None = None, progress: bool = False) -> pd.DataFrame:
        """The predictions table (one row per keypoint × matcher, resized coordinates) of ``prompt`` at
        ``timestep`` (default: the protocol's)."""
        p = self.protocol
        t = p.timestep if timestep is None else int(timestep)
        return predict(self.dataset, self.extractor(t), self.conditioning(prompt), list(p.matchers), p.layer,
                       p.limit, progress=progress)

    def pck(self, prompt, label: str | None = None, timestep: int | None = None,
            progress: bool = False) -> pd.DataFrame:
        """Overall PCK of ``prompt``: tidy :data:`PCK_COLUMNS` (``pck`` in percent, resized space; ``n`` = pairs
        for ``per_image``, keypoints for ``per_point``), one row per matcher × averaging × α."""
        t = self.protocol.timestep if timestep is None else int(timestep)
        df = self.predictions(prompt, t, progress)
        recs = pck_records(df, alphas=self.protocol.alphas, spaces=("resized",), img_size=self.img_size,
                           by_category=False)
        label = label if label is not None else (prompt if isinstance(prompt, str) else "learned")
        rows = [{"prompt": label, "timestep": t, "matcher": r["matcher"], "averaging": r["averaging"],
                 "alpha": float(r["alpha"]), "pck": float(r["pck"]), "n": int(r["n"])} for r in recs]
        return pd.DataFrame(rows, columns=list(PCK_COLUMNS))


def evaluate_prompts(evaluator: PromptEvaluator, prompts: Mapping[str, object], progress: bool = False) -> pd.DataFrame:
    """Test PCK of several prompts under the evaluator's protocol.

    Args:
        evaluator: the :class:`PromptEvaluator`.
        prompts: label → ``"empty"``, ``"text"``, a prompt module, a prompt file or a run folder, e.g.
            ``{"empty": "empty", "text": "text", "single": run_single, "class": run_class}``.

    Returns:
        :data:`PCK_COLUMNS` rows for every prompt (in the given order) × matcher × averaging × α.
    """
    frames = [evaluator.pck(spec, label, progress=progress) for label, spec in prompts.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PCK_COLUMNS))


def _check_values(axis: str, values: Sequence) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"axis {axis!r}: give at least one value")
    if len(set(map(str, values))) != len(values):
        raise ValueError(f"axis {axis!r}: duplicate values {values}")
    if axis == "length" and any(int(v) != v or not 1 <= int(v) <= 75 for v in values):
        raise ValueError(f"prompt lengths must be integers in 1..75, got {values}")
    if axis == "init" and any(v not in ("random", "text", "empty") for v in values):
        raise ValueError(f"inits must be 'random', 'text' or 'empty', got {values}")
    if axis == "lr" and any(not float(v) > 0 for v in values):
        raise ValueError(f"learning rates must be > 0, got {values}")
    if axis in ("train_timestep", "test_timestep") and any(int(v) != v or not 0 <= int(v) < 1000 for v in values):
        raise ValueError(f"timesteps must be integers in 0..999, got {values}")
    if axis in ("length", "train_timestep", "test_timestep"):
        return [int(v) for v in values]
    return [float(v) for v in values] if axis == "lr" else values


def run_ablation(
    base_settings: TrainSettings,
    axis: str,
    values: Sequence,
    out_root: str | Path,
    sd=None,
    protocol: EvalProtocol | None = None,
    *,
    evaluator: PromptEvaluator | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Vary one axis from ``base_settings``, train (or reuse) one prompt per value and test each.

    Args:
        base_settings: the base run (normally a Single prompt); every other setting stays as it is.
        axis: ``"length"`` (``n_tokens``), ``"init"``, ``"lr"``, ``"train_timestep"`` (``timestep``) or
            ``"test_timestep"`` (no training: the base prompt tested at each timestep).
        values: the values of that axis (a value equal to the base setting reuses the base run).
        out_root: folder of the runs (see :func:`run_dir`).
        sd: the loaded model (default: loaded from ``base_settings``).
        protocol: test protocol (default :class:`EvalProtocol`); ignored when ``evaluator`` is given.
        evaluator: a :class:`PromptEvaluator` to share (its latents and dataset) across calls.
        progress: show training progress bars.

    Returns:
        :data:`ABLATION_COLUMNS`: one row per value × matcher × averaging × α, in the order of ``values``; the run
        columns describe the prompt that was tested (for ``test_timestep``, the base run).

    Raises:
        ValueError: unknown axis or invalid values.
    """
    axis = canonical_axis(axis)
    values = _check_values(axis, values)
    if sd is None:
        from .models import load_sd

        sd = evaluator.sd if evaluator is not None else load_sd(base_settings.model, base_settings.device,
                                                                 base_settings.precision, base_settings.seed)
    if evaluator is None:
        evaluator = PromptEvaluator.for_settings(sd, base_settings, protocol)
    field_name = AXES[axis]
    frames = []
    for value in values:
        settings = base_settings if field_name is None else replace(base_settings, **{field_name: value})
        folder, reused = train_or_reuse(settings, out_root, sd, progress=progress)
        timestep = int(value) if axis == "test_timestep" else None
        table = evaluator.pck(folder, label=str(value), timestep=timestep).drop(columns="prompt")
        info = run_info(folder, reused)
        for k, v in info.items():
            table[k] = v
        table["axis"], table["value"] = axis, value
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    return out[list(ABLATION_COLUMNS)]


def ablation_view(table: pd.DataFrame, averaging: str = "per_image") -> pd.DataFrame:
    """A compact view of one :func:`run_ablation` table: one row per value (in order) with ``reused, best_step,
    val_pck_before, best_val_pck`` and one column ``"<matcher> @<alpha>"`` of test PCK per matcher × α."""
    values = list(dict.fromkeys(table["value"]))
    view = table.drop_duplicates("value").set_index("value")[["reused", "best_step", "val_pck_before",
                                                                "best_val_pck"]]
    sub = table[table["averaging"] == averaging]
    for m in dict.fromkeys(sub["matcher"]):
        for a in sorted(sub["alpha"].unique()):
            pick = sub[(sub["matcher"] == m) & np.isclose(sub["alpha"], a)].set_index("value")["pck"]
            view[f"{m} @{a:g}"] = pick.reindex(values).to_numpy()
    return view


def records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready records of a table: Python numbers and strings, NaN → ``None``."""
    out = []
    for row in frame.to_dict("records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out


# --------------------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------------------


def _finish(fig: Figure, save, title: str | None) -> Figure:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig


def plot_prompt_comparison(table: pd.DataFrame, title: str | None = None, save: str | Path | None = None) -> Figure:
    """Grouped bars of test PCK: one panel per matcher × averaging, prompts on the x axis, one bar per α.

    Args:
        table: :data:`PCK_COLUMNS` rows (output of :func:`evaluate_prompts`).
    """
    matchers = list(dict.fromkeys(table["matcher"]))
    averagings = list(dict.fromkeys(table["averaging"]))
    prompts = list(dict.fromkeys(table["prompt"]))
    alphas = sorted(table["alpha"].unique())
    fig, axes = plt.subplots(len(averagings), len(matchers), figsize=(3.6 * len(matchers), 2.8 * len(averagings)),
                             squeeze=False, sharey=True)
    width = 0.8 / max(len(alphas), 1)
    for i, avg in enumerate(averagings):
        for j, m in enumerate(matchers):
            ax = axes[i, j]
            sub = table[(table["matcher"] == m) & (table["averaging"] == avg)]
            for k, a in enumerate(alphas):
                vals = [sub[(sub["prompt"] == p) & np.isclose(sub["alpha"], a)]["pck"].mean() for p in prompts]
                ax.bar(np.arange(len(prompts)) + (k - (len(alphas) - 1) / 2) * width, vals, width,
                       label=f"α={a:g}")
            ax.set_xticks(range(len(prompts)), prompts)
            ax.set_title(f"{m} · {avg}", fontsize=9)
            ax.set_ylabel("test PCK (%)" if j == 0 else "")
            ax.grid(axis="y", alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    return _finish(fig, save, title)


def plot_training(curves: pd.DataFrame, summary: pd.DataFrame, title: str | None = None,
                  save: str | Path | None = None) -> Figure:
    """Training loss against step (one line per prompt) and validation PCK before / after training (bars).

    Args:
        curves: output of :func:`training_curves`.
        summary: output of :func:`training_table`.
    """
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    for label, sub in curves[curves["kind"] == "train"].groupby("prompt", sort=False):
        ax_loss.plot(sub["step"], sub["loss"], marker=".", label=label)
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    x = np.arange(len(summary))
    for shift, col, label in ((-0.2, "val_pck_before", "before training"), (0.2, "val_pck_last", "after training")):
        bars = ax_val.bar(x + shift, pd.to_numeric(summary[col]), 0.4, label=label)
        ax_val.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_val.margins(y=0.15)
    ax_val.set_xticks(x, list(summary["prompt"]))
    ax_val.set_ylabel("validation nn-PCK@0.1 (%)")
    ax_val.grid(axis="y", alpha=0.3)
    ax_val.legend(fontsize=7)
    return _finish(fig, save, title)


def plot_ablations(tables: Mapping[str, pd.DataFrame], alpha: float = 0.1, averaging: str = "per_image",
                   base: Mapping[str, object] | None = None, title: str | None = None,
                   save: str | Path | None = None) -> Figure:
    """One panel per axis: test PCK@``alpha`` against the axis's values (categorical x), one line per matcher.

    Args:
        tables: axis → output of :func:`run_ablation`.
        base: axis → the base run's value, shaded in its panel.
    """
    n = len(tables)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, sharey=True)
    flat = list(axes.ravel())
    for i, (ax, (axis, table)) in enumerate(zip(flat, tables.items())):
        sub = table[(table["averaging"] == averaging) & np.isclose(table["alpha"], alpha)]
        values = list(dict.fromkeys(sub["value"]))
        for k, m in enumerate(dict.fromkeys(sub["matcher"])):
            ys = [sub[(sub["matcher"] == m) & (sub["value"] == v)]["pck"].mean() for v in values]
            ax.plot(range(len(values)), ys, marker="os^D"[k % 4], linestyle=("-", "--", ":", "-.")[k % 4], label=m)
        if base is not None and axis in base and base[axis] in values:
            ax.axvspan(values.index(base[axis]) - 0.25, values.index(base[axis]) + 0.25, color="0.85", zorder=0,
                       label="base")
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_ylim(bottom=0)
        ax.set_xticks(range(len(values)), [f"{v:g}" if isinstance(v, float) else str(v) for v in values])
        ax.set_xlabel(axis)
        ax.set_ylabel(f"test PCK@{alpha:g} ({averaging}, %)" if i % cols == 0 else "")
        ax.grid(alpha=0.3)
    for ax in flat[n:]:
        ax.set_visible(False)
    if n:
        flat[0].legend(fontsize=7)
    return _finish(fig, save, title)
