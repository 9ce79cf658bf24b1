"""Benchmark evaluation: many prompts × many datasets under the paper's test protocol, as tidy tables.

This is the logic behind notebooks 04 (benchmark evaluation) and 03 (CPM against Class and Single):

* :func:`run_benchmark` evaluates every ``(dataset, prompt)`` combination with
  :func:`~sd4match_utils.evaluate.run_evaluation` into ``runs_dir/<dataset>/<prompt name>/``. A finished
  evaluation with the same settings, data, model and prompt *file content* is reused without loading the model;
  an interrupted one is resumed from its shards (``resume=True``); one made with other settings is redone.
  Empty dataset roots stand for the embedded synthetic data.
* :func:`results_table` → one row per dataset × prompt × matcher × α × averaging × space × category with PCK,
  its count and a bootstrap confidence interval (:data:`RESULT_COLUMNS`); :func:`flag_table` → the same split
  by SPair-71k's difficulty flags (:data:`FLAG_COLUMNS`).
* :func:`load_reference` reads the published numbers shipped with the package (``reference_results.csv``) and
  :func:`compare_with_reference` puts ours beside them, matched on method, benchmark, category, α and averaging.
* :func:`pair_table` / :func:`best_worst` → per-pair PCK and the best and worst pairs; :func:`plot_best_worst`.
* For notebook 03: :func:`initial_cpm`, :func:`plot_cpm_state` (the CPM's gate and token norms before and after
  training), :func:`prediction_changes` / :func:`change_summary` / :func:`plot_prediction_changes` (where one
  prompt's answer differs from another's).
* :func:`markdown_table` renders any table as GitHub Markdown (no extra dependency).

PCK follows SPEC §7: ``resized`` space (the paper's) or ``original`` pixels; ``per_image`` (the paper's number)
or ``per_point`` averaging; percent (0–100).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .cache import atomic_write_json, file_sha256
from .conditioning import FIXED_PROMPTS
from .evaluate import PAPER_TEST_SETTINGS, EvalSettings, run_evaluation
from .matching import MATCHERS
from .metrics import ALPHAS, SPACES, bootstrap_ci, clamp_gt, pck_by_flag, pck_correct, pck_records
from .viz import plot_matches, save_figure

__all__ = [
    "BENCHMARK_NAMES",
    "PCK_METRICS",
    "SPAIR_FLAGS",
    "RUN_COLUMNS",
    "RESULT_COLUMNS",
    "FLAG_COLUMNS",
    "PAIR_COLUMNS",
    "COMPARISON_COLUMNS",
    "CHANGE_COLUMNS",
    "REFERENCE_FILE",
    "REFERENCE_METHODS",
    "NOT_COMPARABLE",
    "BenchmarkSettings",
    "prompt_name",
    "prompt_kind",
    "normalise_prompts",
    "resolve_datasets",
    "run_tag",
    "row_label",
    "run_benchmark",
    "load_predictions",
    "results_table",
    "flag_table",
    "pair_table",
    "best_worst",
    "load_reference",
    "compare_with_reference",
    "markdown_table",
    "select",
    "category_table",
    "headline_table",
    "plot_overview",
    "plot_matchers",
    "plot_category_bars",
    "plot_flags",
    "plot_best_worst",
    "initial_cpm",
    "plot_cpm_state",
    "prediction_changes",
    "change_summary",
    "plot_prediction_changes",
]

#: Dataset key → benchmark name used in the reference table.
BENCHMARK_NAMES = {"spair": "SPair-71k", "pfpascal": "PF-Pascal", "pfwillow": "PF-Willow"}
#: Dataset key → the PCK threshold protocol's name in the reference table (SPEC §7).
PCK_METRICS = {"spair": "PCK_bbox", "pfpascal": "PCK_img", "pfwillow": "PCK_bbox_kp"}
#: SPair-71k's per-pair difficulty flags (predictions columns).
SPAIR_FLAGS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
#: Columns of the runs table returned by :func:`run_benchmark`.
RUN_COLUMNS = ("dataset", "prompt", "spec", "kind", "root", "synthetic", "split", "img_size", "folder", "status",
               "seconds", "n_pairs", "n_keypoints")
#: Columns of :func:`results_table` (one row per dataset × prompt × matcher × α × averaging × space × category).
RESULT_COLUMNS = ("dataset", "benchmark", "prompt", "kind", "model", "label", "matcher", "alpha", "averaging",
                  "space", "category", "pck", "n", "ci_low", "ci_high")
#: Columns of :func:`flag_table` (``value`` is ``"all"`` or one value of the flag).
FLAG_COLUMNS = ("dataset", "prompt", "kind", "model", "label", "matcher", "flag", "value", "alpha", "averaging",
                "space", "pck", "n", "ci_low", "ci_high")
#: Columns of :func:`pair_table` (``order``: position of the pair in the predictions file).
PAIR_COLUMNS = ("dataset", "prompt", "matcher", "alpha", "order", "pair_id", "category", "n_kps", "n_correct", "pck")
#: Columns of :func:`compare_with_reference`.
COMPARISON_COLUMNS = ("method", "benchmark", "category", "metric", "alpha", "averaging", "reference", "confidence",
                      "label", "dataset", "prompt", "matcher", "ours", "ci_low", "ci_high", "difference",
                      "comparable", "note")
#: Columns of :func:`prediction_changes` (``_a``: the first prompt, ``_b``: the second).
CHANGE_COLUMNS = ("pair_id", "category", "kp_index", "src_x", "src_y", "gt_x", "gt_y", "thr", "pred_x_a", "pred_y_a",
                  "correct_a", "pred_x_b", "pred_y_b", "correct_b", "moved", "changed", "outcome")

#: The published numbers shipped with the package (see its ``source`` and ``confidence`` columns).
REFERENCE_FILE = Path(__file__).with_name("reference_results.csv")
#: Prompt kind → the reference method our rows are compared with. Zero-shot prompts are set beside DIFT, the
#: published zero-shot SD 2-1 read-out (DIFT reads t = 261 and learns nothing); Single and Class prompts have no
#: reprinted number in the reference table.
REFERENCE_METHODS = {"cpm": "SD4Match-CPM", "text": "DIFT (SD2-1 zero-shot)", "empty": "DIFT (SD2-1 zero-shot)"}
#: How rows made with the embedded default are labelled.
NOT_COMPARABLE = "tiny (random weights), synthetic data — not comparable"

_SETTINGS_NOT_IN_KEY = ("cache_dir", "dino_cache", "batch_size")
_SIDE_FILE = "benchmark.json"


# --------------------------------------------------------------------------------------------------------------
# settings and names
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BenchmarkSettings:
    """The protocol every ``(dataset, prompt)`` evaluation shares. Defaults are the paper's test settings (SPEC §2,
    §6, §7): ``up_blocks[1]``, t = 50, 8 noise copies, all test pairs; ``matchers`` lists every matcher (the paper
    reports ``kernel_softmax``).

    Attributes:
        model: ``"tiny"``, a hub id or a diffusers folder.
        split: the split evaluated (``"test"``).
        layer, timestep, ensemble: the feature read-out.
        matchers: names from :data:`~sd4match_utils.matching.MATCHERS`, or ``("all",)``.
        limit: evaluate only the first ``limit`` pairs of each dataset (``None``: all).
        seed: feature seed (latent sample and noise, per image).
        img_size: square resize (``None``: the model's native size, 768 for SD 2-1).
        latent, precision, device, batch_size, cache_dir: as in :class:`~sd4match_utils.evaluate.EvalSettings`.
        dino, dino_cache: CPM prompts: a DINOv2 overriding the one recorded in the file, and a feature cache.
    """

    model: str = "tiny"
    split: str = "test"
    layer: int = PAPER_TEST_SETTINGS["layer"]
    timestep: int = PAPER_TEST_SETTINGS["timestep"]
    ensemble: int = PAPER_TEST_SETTINGS["ensemble"]
    matchers: tuple[str, ...] = tuple(MATCHERS)
    limit: int | None = None
    seed: int = 0
    img_size: int | None = None
    latent: str = "sample"
    precision: str = "fp32"
    device: str = "cpu"
    batch_size: int = 8
    cache_dir: str | None = None
    dino: str | None = None
    dino_cache: str | None = None

    def __post_init__(self):
        matchers = self.matchers.split(",") if isinstance(self.matchers, str) else list(self.matchers)
        matchers = [m.strip() for m in matchers if m.strip()]
        self.matchers = tuple(MATCHERS) if matchers in (["all"], []) else tuple(matchers)
        bad = [m for m in self.matchers if m not in MATCHERS]
        if bad:
            raise ValueError(f"unknown matcher(s) {bad}; expected 'all' or some of {list(MATCHERS)}")
        self.limit = int(self.limit) if self.limit else None
        self.img_size = int(self.img_size) if self.img_size else None

    def eval_settings(self, dataset: str, data_root: str | Path, prompt: str) -> EvalSettings:
        """The :class:`~sd4match_utils.evaluate.EvalSettings` of one ``(dataset, prompt)`` evaluation (data root and
        prompt file made absolute, so a run started from another folder still finds and reuses its work)."""
        if str(prompt) not in FIXED_PROMPTS:
            prompt = str(Path(prompt).expanduser().resolve())
        return EvalSettings(
            dataset=dataset, data_root=str(Path(data_root).expanduser().resolve()), split=self.split,
            model=self.model, prompt=prompt, layer=self.layer, timestep=self.timestep, ensemble=self.ensemble,
            matchers=list(self.matchers), limit=self.limit, seed=self.seed, img_size=self.img_size,
            latent=self.latent, precision=self.precision, device=self.device, batch_size=self.batch_size,
            cache_dir=self.cache_dir, dino=self.dino, dino_cache=self.dino_cache)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "prompt"


def prompt_name(spec: str | Path) -> str:
    """A short file-system-safe name for a prompt: ``"empty"`` / ``"text"`` stay; a trained run's
    ``<run>/prompt_best.safetensors`` → ``"<run>"`` (``prompt_last`` → ``"<run>-last"``); an imported
    ``<folder>/prompt.safetensors`` → ``"<folder>"``; any other file → its stem."""
    spec = str(spec)
    if spec in FIXED_PROMPTS:
        return spec
    path = Path(spec)
    if path.stem in ("prompt_best", "prompt", "prompt_last") and path.parent.name:
        return _safe(path.parent.name + ("-last" if path.stem == "prompt_last" else ""))
    return _safe(path.stem)


def prompt_kind(spec: str | Path) -> str:
    """``"empty"`` / ``"text"`` for fixed prompts, else the ``kind`` a prompt file records (``single``, ``class``,
    ``cpm``), read from its metadata without loading a model.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a prompt file.
    """
    spec = str(spec)
    if spec in FIXED_PROMPTS:
        return spec
    from safetensors import safe_open

    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found (prompts are 'empty', 'text' or .safetensors files)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable prompt file ({e})") from e
    if meta.get("format") != "sd4match-prompt":
        raise ValueError(f"{path}: not an sd4match prompt file (format={meta.get('format')!r})")
    return meta.get("kind", "unknown")


def normalise_prompts(prompts: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``name → spec`` for a list of specs (names from :func:`prompt_name`, made unique with ``-2``, ``-3``…) or
    a ready mapping (names sanitised). Paths are kept as given."""
    items = list(prompts.items()) if isinstance(prompts, Mapping) else [(prompt_name(p), str(p)) for p in prompts]
    if not items:
        raise ValueError("no prompts to evaluate")
    out: dict[str, str] = {}
    for name, spec in items:
        name, base, k = _safe(name), _safe(name), 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out[name] = str(spec)
    return out


def resolve_datasets(datasets: Mapping[str, str | Path], synthetic_root: str | Path | None = None
                     ) -> dict[str, tuple[Path, bool]]:
    """``dataset → (root, synthetic)``: an empty root means the embedded synthetic data under ``synthetic_root``
    (generated on first use with :func:`~sd4match_utils.data.ensure_synthetic`). A given root counts as synthetic
    too when it is one of the generator's folders (its parent holds the generator's ``synthetic.json``), so
    numbers made on generated images are never labelled as benchmark numbers.

    Raises:
        ValueError: an unknown dataset, or an empty root without ``synthetic_root``.
    """
    from .data import BENCHMARKS, ensure_synthetic

    out, generated = {}, None
    for name, root in datasets.items():
        if name not in BENCHMARKS:
            raise ValueError(f"unknown dataset {name!r}; expected some of {BENCHMARKS}")
        if root is None or str(root).strip() == "":
            if synthetic_root is None:
                raise ValueError(f"{name}: empty root and no synthetic_root to generate the embedded data in")
            generated = generated or ensure_synthetic(Path(synthetic_root))
            out[name] = (Path(generated[name]), True)
        else:
            root = Path(root).expanduser()
            out[name] = (root, (root.parent / "synthetic.json").is_file())
    return out


def run_tag(model: str, synthetic: Mapping[str, bool]) -> str:
    """``<model-tag>_<datasets>`` for output names, e.g. ``tiny_spair-pfpascal-synthetic`` when every dataset is
    the synthetic one, ``sd2-community--stable-diffusion-2-1_spair-pfwillow`` for real data (a mixed set tags
    each synthetic dataset)."""
    from .study import dataset_tag, model_tag

    if not synthetic:
        raise ValueError("no datasets")
    flags = set(synthetic.values())
    if len(flags) == 1:
        part = dataset_tag("-".join(synthetic), flags.pop())
    else:
        part = "-".join(dataset_tag(d, s) for d, s in synthetic.items())
    return f"{model_tag(model)}_{part}"


def row_label(model: str, prompt: str, synthetic: bool) -> str:
    """How our rows are labelled next to published numbers: ``"<model> · <prompt>"``, plus a clear warning when the
    numbers come from the embedded default (tiny random weights and / or synthetic data)."""
    label = f"{model} · {prompt}"
    if model == "tiny" and synthetic:
        return f"{label} [{NOT_COMPARABLE}]"
    if model == "tiny":
        return f"{label} [tiny (random weights) — not comparable]"
    if synthetic:
        return f"{label} [synthetic data — not comparable]"
    return label


# --------------------------------------------------------------------------------------------------------------
# running (with reuse)
# --------------------------------------------------------------------------------------------------------------


def _run_key(es: EvalSettings) -> dict:
    """What must be equal for a finished evaluation to be reused: the settings (prompt path replaced by the file's
    content hash, data root resolved) minus those that do not change predictions."""
    key = {k: v for k, v in asdict(es).items() if k not in _SETTINGS_NOT_IN_KEY}
    if es.prompt not in FIXED_PROMPTS:
        key["prompt"] = "sha256:" + file_sha256(Path(es.prompt).expanduser())
    return json.loads(json.dumps(key, default=str))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _evaluate_one(es: EvalSettings, folder: Path, get_sd, progress: bool, shard_size: int) -> tuple[dict, str, float]:
    """Evaluate one ``(dataset, prompt)`` into ``folder`` unless a finished matching run is there.

    Returns ``(metrics, status, seconds)`` with status ``"reused"``, ``"resumed"`` or ``"computed"``."""
    key = _run_key(es)
    side = _read_json(folder / _SIDE_FILE)
    metrics = _read_json(folder / "metrics.json")
    same = side is not None and side.get("key") == key
    if same and side.get("status") == "done" and metrics and (folder / "predictions.csv").is_file():
        sd = get_sd(loaded_only=True)
        if sd is None or metrics.get("model", {}).get("fingerprint") == sd.identity.get("fingerprint"):
            return metrics, "reused", 0.0
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / _SIDE_FILE, {"key": key, "status": "running"})
    resume = same  # shards of this very job (an interrupted run) are reused; anything else starts afresh
    try:
        metrics = run_evaluation(es, folder, sd=get_sd(), progress=progress, resume=resume, shard_size=shard_size)
    except ValueError as e:
        if not (resume and "cannot resume" in str(e)):
            raise
        resume = False
        metrics = run_evaluation(es, folder, sd=get_sd(), progress=progress, resume=False, shard_size=shard_size)
    seconds = time.perf_counter() - t0
    atomic_write_json(folder / _SIDE_FILE, {"key": key, "status": "done", "seconds": round(seconds, 3)})
    status = "resumed" if resume and metrics["run"]["pairs_from_earlier_runs"] > 0 else "computed"
    return metrics, status, seconds


def run_benchmark(
    datasets: Mapping[str, str | Path],
    prompts: Sequence[str] | Mapping[str, str],
    settings: BenchmarkSettings | None = None,
    runs_dir: str | Path = "runs/benchmark",
    synthetic_root: str | Path | None = None,
    sd=None,
    progress: bool = False,
    shard_size: int = 200,
) -> pd.DataFrame:
    """Evaluate every prompt on every dataset with one protocol, reusing finished work.

    Each ``(dataset, prompt)`` goes through :func:`~sd4match_utils.evaluate.run_evaluation` into
    ``runs_dir/<dataset>/<prompt name>/`` (``predictions.csv``, ``metrics.json``, ``shards/`` and
    ``benchmark.json``, which records the settings and the prompt file's hash). A finished run with the same
    settings and prompt content is reused as is (the model is not even loaded when everything is reused; when
    ``sd`` is given its weight fingerprint must match too); a killed run is resumed from its shards; a run made
    with other settings (or a changed prompt file) is redone.

    Args:
        datasets: ``dataset → root`` (``"spair"``, ``"pfpascal"``, ``"pfwillow"``); an empty root is the embedded
            synthetic data under ``synthetic_root``.
        prompts: ``["empty", "text", "path/to/prompt.safetensors", ...]`` (names from :func:`prompt_name`) or
            ``{name: spec}``.
        settings: the protocol (default: the paper's, :class:`BenchmarkSettings`).
        runs_dir: where the evaluations live.
        synthetic_root: folder of the embedded synthetic data (needed only for empty roots).
        sd: an already loaded model (default: loaded on first need from ``settings``).
        progress: tqdm bars per evaluation.
        shard_size: pairs per saved shard (how much work a kill can lose).

    Returns:
        The runs table, :data:`RUN_COLUMNS`, one row per dataset × prompt in the order given; ``status`` is
        ``"reused"``, ``"resumed"`` or ``"computed"``; ``seconds`` the time spent now.
    """
    settings = settings or BenchmarkSettings()
    named = normalise_prompts(prompts)
    kinds = {name: prompt_kind(spec) for name, spec in named.items()}  # fails early on a missing file
    resolved = resolve_datasets(datasets, synthetic_root)
    holder = {"sd": sd}

    def get_sd(loaded_only: bool = False):
        if holder["sd"] is None and not loaded_only:
            from .models import load_sd

            holder["sd"] = load_sd(settings.model, device=settings.device, precision=settings.precision)
        return holder["sd"]

    rows = []
    for dataset, (root, synthetic) in resolved.items():
        for name, spec in named.items():
            es = settings.eval_settings(dataset, root, spec)
            folder = Path(runs_dir) / dataset / name
            metrics, status, seconds = _evaluate_one(es, folder, get_sd, progress, shard_size)
            rows.append({"dataset": dataset, "prompt": name, "spec": spec, "kind": kinds[name], "root": str(root),
                         "synthetic": synthetic, "split": settings.split,
                         "img_size": int(metrics["settings"]["img_size"]), "folder": str(folder), "status": status,
                         "seconds": round(seconds, 3), "n_pairs": int(metrics["dataset"]["n_pairs"]),
                         "n_keypoints": int(metrics["dataset"]["n_keypoints"])})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def load_predictions(folder: str | Path) -> pd.DataFrame:
    """``folder/predictions.csv`` with identifiers read as strings (pair ids such as ``"00012"`` keep their zeros)."""
    text_cols = ("pair_id", "category", "kp_name", "src_name", "trg_name")
    df = pd.read_csv(Path(folder) / "predictions.csv", dtype={c: str for c in text_cols})
    for c in text_cols:
        if c in df.columns:
            df[c] = df[c].fillna("")
    return df


# --------------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------------


def _runs_iter(runs: pd.DataFrame, model: str | None):
    """``(run row, predictions, model name)`` of every run."""
    for run in runs.itertuples(index=False):
        metrics = _read_json(Path(run.folder) / "metrics.json") or {}
        name = model or metrics.get("settings", {}).get("model", "?")
        yield run, load_predictions(run.folder), name


def _ci(df: pd.DataFrame, alpha: float, averaging: str, space: str, img_size: int, n_boot: int, level: float,
        seed: int) -> tuple[float, float]:
    if len(df) == 0 or n_boot < 1:
        return math.nan, math.nan
    return bootstrap_ci(df, alpha=alpha, averaging=averaging, space=space, n_boot=n_boot, level=level, seed=seed,
                        img_size=img_size)


def results_table(
    runs: pd.DataFrame,
    alphas: Sequence[float] = ALPHAS,
    spaces: Sequence[str] = SPACES,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    by_category: bool = True,
    model: str | None = None,
) -> pd.DataFrame:
    """Tidy PCK of every run: one row per dataset × prompt × matcher × α × averaging × space × category.

    Args:
        runs: the runs table of :func:`run_benchmark`.
        alphas, spaces: PCK thresholds and coordinate spaces (``"resized"`` is the paper's).
        n_boot, level, seed: percentile bootstrap over pairs (:func:`~sd4match_utils.metrics.bootstrap_ci`) for
            ``ci_low`` / ``ci_high`` (``n_boot=0``: no intervals, NaN).
        by_category: add one row per category besides ``"all"``.
        model: the model name for the ``model`` / ``label`` columns (default: the one each run recorded).

    Returns:
        :data:`RESULT_COLUMNS`; ``pck``, ``ci_low``, ``ci_high`` in percent; ``n`` = pairs (``per_image``) or
        keypoints (``per_point``).
    """
    rows = []
    for run, df, name in _runs_iter(runs, model):
        label = row_label(name, run.prompt, bool(run.synthetic))
        for matcher, sub in df.groupby("matcher", sort=True):
            groups = {"all": sub}
            if by_category:
                groups.update({c: g for c, g in sub.groupby("category", sort=True)})
            records = pck_records(sub, alphas=alphas, spaces=spaces, img_size=run.img_size, by_category=by_category)
            for r in records:
                lo, hi = _ci(groups[r["category"]], r["alpha"], r["averaging"], r["space"], run.img_size, n_boot,
                             level, seed)
                rows.append({"dataset": run.dataset, "benchmark": BENCHMARK_NAMES.get(run.dataset, run.dataset),
                             "prompt": run.prompt, "kind": run.kind, "model": name, "label": label,
                             "matcher": matcher, "alpha": float(r["alpha"]), "averaging": r["averaging"],
                             "space": r["space"], "category": r["category"], "pck": r["pck"], "n": r["n"],
                             "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def flag_table(
    runs: pd.DataFrame,
    flags: Sequence[str] = SPAIR_FLAGS,
    matchers: Sequence[str] | None = ("kernel_softmax",),
    alphas: Sequence[float] = ALPHAS,
    spaces: Sequence[str] = ("resized",),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    model: str | None = None,
) -> pd.DataFrame:
    """PCK split by per-pair difficulty flags (SPair-71k's viewpoint, scale, truncation and occlusion levels) with
    :func:`~sd4match_utils.metrics.pck_by_flag`; runs whose predictions lack a flag column are skipped.

    Returns:
        :data:`FLAG_COLUMNS`, one row per dataset × prompt × matcher × flag × value (``"all"`` first) × α ×
        averaging × space, bootstrap intervals as in :func:`results_table`.
    """
    rows = []
    for run, df, name in _runs_iter(runs, model):
        label = row_label(name, run.prompt, bool(run.synthetic))
        if matchers is not None:
            df = df[df["matcher"].isin(list(matchers))]
        for flag in flags:
            if flag not in df.columns or len(df) == 0:
                continue
            for matcher, sub in df.groupby("matcher", sort=True):
                for r in pck_by_flag(sub, flag, alphas=alphas, spaces=spaces, img_size=run.img_size):
                    value = r[flag]
                    part = sub if value == "all" else sub[sub[flag] == value]
                    lo, hi = _ci(part, r["alpha"], r["averaging"], r["space"], run.img_size, n_boot, level, seed)
                    rows.append({"dataset": run.dataset, "prompt": run.prompt, "kind": run.kind, "model": name,
                                 "label": label, "matcher": matcher, "flag": flag,
                                 "value": value if value == "all" else int(value), "alpha": float(r["alpha"]),
                                 "averaging": r["averaging"], "space": r["space"], "pck": r["pck"], "n": r["n"],
                                 "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=list(FLAG_COLUMNS))


def _pair_pck(df: pd.DataFrame, alpha: float, img_size: int) -> pd.DataFrame:
    """Per-pair ``n_kps``, ``n_correct``, ``pck`` (percent, resized space) of a one-matcher predictions table."""
    if len(df) == 0:
        return pd.DataFrame(columns=["order", "pair_id", "category", "n_kps", "n_correct", "pck"])
    correct = pck_correct(df[["pred_x", "pred_y"]].to_numpy(float), clamp_gt(df[["gt_x", "gt_y"]].to_numpy(float),
                          img_size), df["thr"].to_numpy(float), alpha)
    frame = pd.DataFrame({"pair_id": df["pair_id"].to_numpy(), "category": df["category"].to_numpy(),
                          "correct": correct})
    g = frame.groupby(["category", "pair_id"], sort=False)
    out = g["correct"].agg(n_kps="size", n_correct="sum").reset_index()
    out["n_correct"] = out["n_correct"].astype(int)
    out["pck"] = 100.0 * out["n_correct"] / out["n_kps"]
    out.insert(0, "order", np.arange(len(out)))
    return out[["order", "pair_id", "category", "n_kps", "n_correct", "pck"]]


def pair_table(runs: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1) -> pd.DataFrame:
    """Per-pair PCK@``alpha`` (resized space) of one matcher for every run: :data:`PAIR_COLUMNS`, pairs in file
    order."""
    frames = []
    for run, df, _ in _runs_iter(runs, None):
        pairs = _pair_pck(df[df["matcher"] == matcher], alpha, run.img_size)
        pairs.insert(0, "alpha", float(alpha))
        pairs.insert(0, "matcher", matcher)
        pairs.insert(0, "prompt", run.prompt)
        pairs.insert(0, "dataset", run.dataset)
        frames.append(pairs)
    if not frames:
        return pd.DataFrame(columns=list(PAIR_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(PAIR_COLUMNS)]


def best_worst(pairs: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` best and ``n`` worst pairs by per-pair PCK within each dataset × prompt × matcher.

    Ties are broken deterministically: more keypoints first (more evidence), then file order. A pair is never both
    best and worst (with fewer than ``2n`` pairs the worst list is shorter).

    Returns:
        The rows of ``pairs`` with ``which`` (``"best"`` / ``"worst"``) and ``rank`` (1 = best / worst) in front.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    frames = []
    for _, g in pairs.groupby(["dataset", "prompt", "matcher"], sort=False):
        best = g.sort_values(["pck", "n_kps", "order"], ascending=[False, False, True], kind="stable").head(n)
        rest = g.drop(index=best.index)
        worst = rest.sort_values(["pck", "n_kps", "order"], ascending=[True, False, True], kind="stable").head(n)
        for which, part in (("best", best), ("worst", worst)):
            part = part.copy()
            part.insert(0, "rank", np.arange(1, len(part) + 1))
            part.insert(0, "which", which)
            frames.append(part)
    if not frames:
        return pd.DataFrame(columns=["which", "rank", *PAIR_COLUMNS])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------------------
# reference numbers
# --------------------------------------------------------------------------------------------------------------


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The published numbers (default: the package's ``reference_results.csv``).

    The file's ``benchmark`` may name a category (``"SPair-71k/aeroplane"``); it is split into ``benchmark`` and
    ``category`` (``"all"`` otherwise). ``confidence`` says how sure each number is, ``source`` where it comes from.

    Returns:
        Columns ``method, benchmark, category, metric, alpha (float), averaging, value, confidence, note, source``.
    """
    ref = pd.read_csv(path or REFERENCE_FILE, dtype=str, keep_default_na=False)
    missing = {"method", "benchmark", "metric", "alpha", "averaging", "value", "confidence"} - set(ref.columns)
    if missing:
        raise ValueError(f"{path or REFERENCE_FILE}: reference table lacks the columns {sorted(missing)}")
    split = ref["benchmark"].str.split("/", n=1, expand=True)
    ref["benchmark"] = split[0]
    ref.insert(2, "category", split[1].fillna("all") if split.shape[1] > 1 else "all")
    ref["alpha"] = ref["alpha"].astype(float)
    ref["value"] = ref["value"].astype(float)
    for col in ("note", "source"):
        if col not in ref.columns:
            ref[col] = ""
    return ref[["method", "benchmark", "category", "metric", "alpha", "averaging", "value", "confidence", "note",
                "source"]]


def compare_with_reference(
    results: pd.DataFrame,
    reference: pd.DataFrame | None = None,
    methods: Mapping[str, str] | None = None,
    matcher: str = "kernel_softmax",
    space: str = "resized",
) -> pd.DataFrame:
    """Our numbers beside the published ones, matched on method, benchmark, category, α and averaging.

    Each of our prompts stands for a reference method through its prompt name or kind (``methods``, default
    :data:`REFERENCE_METHODS`: a CPM prompt ↔ ``SD4Match-CPM``, the fixed prompts ↔ DIFT's zero-shot SD 2-1); a
    prompt with no method, and reference rows with no counterpart among ours, are left out.

    Args:
        results: :func:`results_table`.
        reference: :func:`load_reference` (default: the package's).
        methods: prompt name or kind → reference method (names take precedence over kinds).
        matcher, space: which of our rows stand for the paper's protocol (kernel-softmax, resized 768² space).

    Returns:
        :data:`COMPARISON_COLUMNS`; ``difference = ours − reference`` (PCK points); ``comparable`` is False for
        rows from the embedded default (label says so) and ``note`` explains the match.
    """
    reference = load_reference() if reference is None else reference
    methods = dict(REFERENCE_METHODS if methods is None else methods)
    ours = results[(results["matcher"] == matcher) & (results["space"] == space)].copy()
    ours["method"] = [methods.get(p, methods.get(k)) for p, k in zip(ours["prompt"], ours["kind"])]
    ours = ours[ours["method"].notna()]
    if ours.empty:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    ours["alpha_key"] = ours["alpha"].round(4)
    ref = reference.rename(columns={"value": "reference", "note": "ref_note"}).copy()
    ref["alpha_key"] = ref["alpha"].round(4)
    merged = ref.drop(columns=["alpha"]).merge(
        ours.rename(columns={"pck": "ours"}), on=["method", "benchmark", "category", "alpha_key", "averaging"],
        how="inner")
    merged["alpha"] = merged["alpha_key"]
    merged["difference"] = merged["ours"] - merged["reference"]
    merged["comparable"] = ~merged["label"].str.contains("not comparable", regex=False)

    def note(row) -> str:
        parts = []
        if row["method"].startswith("DIFT"):
            parts.append("closest published zero-shot SD 2-1 read-out (DIFT: t = 261, no learned prompt)")
        if row["ref_note"]:
            parts.append(f"reference: {row['ref_note']}")
        parts.append(f"confidence: {row['confidence']}")
        return "; ".join(parts)

    merged["note"] = merged.apply(note, axis=1) if len(merged) else []
    order = {m: i for i, m in enumerate(dict.fromkeys(reference["method"]))}
    merged["_m"] = merged["method"].map(order)
    merged["_c"] = merged["category"] != "all"
    merged = merged.sort_values(["_m", "benchmark", "_c", "category", "averaging", "alpha", "prompt"], kind="stable")
    return merged[list(COMPARISON_COLUMNS)].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------


def _cell(value, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".1f", index: bool = False,
                   formats: Mapping[str, str] | None = None) -> str:
    """A GitHub-Markdown table of ``df`` (numbers right-aligned, floats with ``floatfmt`` — per column with
    ``formats``, default ``{"alpha": "g"}`` so that 0.05 stays 0.05 —, NaN as "—"; multi-level column names
    joined with a space; ``index=True`` includes the index as leading columns)."""
    frame = df.reset_index() if index else df
    formats = {"alpha": "g", **(formats or {})}
    cols = [" ".join(str(p) for p in c if str(p) != "") if isinstance(c, tuple) else str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]
    fmts = [formats.get(c, floatfmt) for c in cols]
    lines = ["| " + " | ".join(_cell(c, floatfmt) for c in cols) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, f) for v, f in zip(row, fmts)) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------------


def select(frame: pd.DataFrame, **conditions) -> pd.DataFrame:
    """Rows of a results / flags table where every given column equals its value (``None`` = any; ``alpha`` is
    compared with a tolerance), e.g. ``select(results, matcher="kernel_softmax", alpha=0.1, category="all")``."""
    for col, value in conditions.items():
        if value is None or col not in frame.columns:
            continue
        if col == "alpha":
            frame = frame[np.isclose(frame[col].astype(float), float(value))]
        else:
            frame = frame[frame[col] == value]
    return frame


def category_table(results: pd.DataFrame, dataset: str | None = None, prompts: Sequence[str] | None = None,
                   matcher: str = "kernel_softmax", alpha: float = 0.1, averaging: str = "per_image",
                   space: str = "resized") -> pd.DataFrame:
    """PCK per category (rows, ``"all"`` first) and prompt (columns, in ``prompts`` order or first appearance) for
    one dataset, matcher, α, averaging and space (default: the paper's number)."""
    frame = select(results, dataset=dataset, matcher=matcher, alpha=alpha, averaging=averaging, space=space)
    prompts = list(prompts) if prompts is not None else list(dict.fromkeys(frame["prompt"]))
    table = frame.pivot_table(index="category", columns="prompt", values="pck", aggfunc="first")
    order = sorted(table.index, key=lambda c: (c != "all", str(c)))
    return table.reindex(index=order, columns=[p for p in prompts if p in table.columns])


def headline_table(results: pd.DataFrame, matcher: str = "kernel_softmax", space: str = "resized",
                   category: str = "all", with_ci: bool = True, digits: int = 1) -> pd.DataFrame:
    """The overall numbers: rows ``(benchmark, prompt)``, columns ``PCK@α <averaging>`` for every α and averaging
    (per image first). With ``with_ci`` each cell is the text ``"pck [ci_low, ci_high]"`` rounded to ``digits``,
    otherwise the PCK as a float."""
    frame = select(results, matcher=matcher, space=space, category=category).copy()
    frame["column"] = [f"PCK@{a:g} {v.replace('_', ' ')}" for a, v in zip(frame["alpha"], frame["averaging"])]
    if with_ci:
        frame["cell"] = [f"{p:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if not math.isnan(lo)
                         else f"{p:.{digits}f}" for p, lo, hi in zip(frame["pck"], frame["ci_low"], frame["ci_high"])]
    else:
        frame["cell"] = frame["pck"]
    frame = frame.sort_values(["averaging", "alpha"], key=lambda s: s.map({"per_image": 0, "per_point": 1})
                              if s.name == "averaging" else s, kind="stable")
    columns = list(dict.fromkeys(frame["column"]))
    rows = list(dict.fromkeys(zip(frame["benchmark"], frame["prompt"])))
    table = frame.pivot_table(index=["benchmark", "prompt"], columns="column", values="cell", aggfunc="first")
    return table.reindex(index=pd.MultiIndex.from_tuples(rows, names=["benchmark", "prompt"]), columns=columns)


def _grouped_bars(ax, frame: pd.DataFrame, x: str, hue: str, xs: list, hues: list, value: str = "pck",
                  ci: bool = True) -> None:
    """Bars of ``value`` at each ``x`` (groups) for each ``hue`` (bars within a group), CI whiskers when present."""
    width = 0.8 / max(len(hues), 1)
    colours = plt.get_cmap("tab10")
    for j, h in enumerate(hues):
        sub = frame[frame[hue] == h].set_index(x)
        vals = [float(sub.loc[v, value]) if v in sub.index else math.nan for v in xs]
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        err = None
        if ci and {"ci_low", "ci_high"} <= set(sub.columns):
            lo = [float(sub.loc[v, "ci_low"]) if v in sub.index else math.nan for v in xs]
            hi = [float(sub.loc[v, "ci_high"]) if v in sub.index else math.nan for v in xs]
            err = np.nan_to_num(np.clip(np.array([np.subtract(vals, lo), np.subtract(hi, vals)]), 0, None))
        ax.bar(pos, np.nan_to_num(vals), width * 0.92, yerr=err, capsize=2, label=str(h), color=colours(j % 10),
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(np.arange(len(xs)))
    ax.set_xticklabels([str(v) for v in xs], rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center",
                       fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)


def _finish(fig: Figure, save, title: str | None) -> Figure:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig


def _metric_label(alpha: float, averaging: str, matcher: str | None) -> str:
    return f"PCK@{alpha:g} ({averaging.replace('_', ' ')}{', ' + matcher if matcher else ''}) %"


def plot_overview(results: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1,
                  averaging: str = "per_image", space: str = "resized", title: str | None = None,
                  save: str | Path | None = None) -> Figure:
    """Overall PCK per dataset (groups) and prompt (bars) with bootstrap-CI whiskers."""
    frame = select(results, matcher=matcher, alpha=alpha, averaging=averaging, space=space, category="all")
    datasets, prompts = list(dict.fromkeys(frame["dataset"])), list(dict.fromkeys(frame["prompt"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 1.4 * len(datasets) * max(1, len(prompts)) / 2), 3.4))
    _grouped_bars(ax, frame.assign(dataset=frame["dataset"].map(lambda d: BENCHMARK_NAMES.get(d, d))), "dataset",
                  "prompt", [BENCHMARK_NAMES.get(d, d) for d in datasets], prompts)
    ax.set_ylabel(_metric_label(alpha, averaging, matcher), fontsize=8)
    ax.legend(fontsize=7, title="prompt", title_fontsize=7)
    return _finish(fig, save, title)


def plot_matchers(results: pd.DataFrame, alpha: float = 0.1, averaging: str = "per_image", space: str = "resized",
                  title: str | None = None, save: str | Path | None = None) -> Figure:
    """One panel per dataset (stacked): PCK of every matcher (groups) for each prompt (bars), CI whiskers."""
    frame = select(results, alpha=alpha, averaging=averaging, space=space, category="all")
    datasets = list(dict.fromkeys(frame["dataset"]))
    prompts = list(dict.fromkeys(frame["prompt"]))
    matchers = [m for m in MATCHERS if m in set(frame["matcher"])]
    width = min(10.0, max(5.0, 0.35 * len(matchers) * max(len(prompts), 1) + 1.5))
    fig, axes = plt.subplots(max(len(datasets), 1), 1, figsize=(width, 2.8 * max(len(datasets), 1)), squeeze=False)
    for ax, d in zip(axes[:, 0], datasets):
        _grouped_bars(ax, frame[frame["dataset"] == d], "matcher", "prompt", matchers, prompts)
        ax.set_title(BENCHMARK_NAMES.get(d, d), fontsize=9)
        ax.set_ylabel(_metric_label(alpha, averaging, None), fontsize=8)
    axes[0][0].legend(fontsize=7, title="prompt", title_fontsize=7)
    return _finish(fig, save, title)


def plot_category_bars(results: pd.DataFrame, dataset: str, matcher: str = "kernel_softmax", alpha: float = 0.1,
                       averaging: str = "per_image", space: str = "resized", prompts: Sequence[str] | None = None,
                       ci: bool = True, title: str | None = None, ax=None, save: str | Path | None = None) -> Figure:
    """Grouped bar chart: one group per category (``"all"`` first), one bar per prompt, CI whiskers."""
    frame = select(results, dataset=dataset, matcher=matcher, alpha=alpha, averaging=averaging, space=space)
    prompts = list(prompts) if prompts is not None else list(dict.fromkeys(frame["prompt"]))
    cats = sorted(set(frame["category"]), key=lambda c: (c != "all", str(c)))
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * len(cats) * max(len(prompts), 1) + 1.5), 3.4))
    else:
        fig = ax.figure
    _grouped_bars(ax, frame, "category", "prompt", cats, prompts, ci=ci)
    ax.set_ylabel(_metric_label(alpha, averaging, matcher), fontsize=8)
    ax.legend(fontsize=7, title="prompt", title_fontsize=7)
    if own:
        return _finish(fig, save, title)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_flags(flags: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1,
               averaging: str = "per_image", space: str = "resized", dataset: str | None = None,
               title: str | None = None, save: str | Path | None = None) -> Figure:
    """One panel per difficulty flag: PCK at each flag value (``all`` first) for each prompt, CI whiskers."""
    frame = select(flags, matcher=matcher, alpha=alpha, averaging=averaging, space=space, dataset=dataset)
    names = list(dict.fromkeys(frame["flag"]))
    prompts = list(dict.fromkeys(frame["prompt"]))
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.0 * max(len(names), 1), 3.2), squeeze=False)
    for ax, flag in zip(axes[0], names):
        sub = frame[frame["flag"] == flag].copy()
        sub["value"] = sub["value"].astype(str)
        values = sorted(set(sub["value"]), key=lambda v: (v != "all", v))
        _grouped_bars(ax, sub, "value", "prompt", values, prompts)
        ax.set_title(flag.replace("_", " "), fontsize=9)
        ax.set_ylabel(_metric_label(alpha, averaging, matcher), fontsize=8)
    if names:
        axes[0][0].legend(fontsize=7, title="prompt", title_fontsize=7)
    return _finish(fig, save, title)


def _open_run_dataset(run):
    from .data import load_dataset

    return load_dataset(run.dataset, run.root, run.split, img_size=int(run.img_size))


def _pair_arrays(df: pd.DataFrame, pair_id: str, category: str) -> pd.DataFrame:
    return df[(df["pair_id"] == pair_id) & (df["category"] == category)].sort_values("kp_index")


def plot_best_worst(runs: pd.DataFrame, selection: pd.DataFrame, alpha: float = 0.1, title: str | None = None,
                    save: str | Path | None = None) -> Figure:
    """The selected best and worst pairs (:func:`best_worst`) with their matches, one row per dataset × prompt:
    source | target, a line from each source keypoint to its prediction (green within ``alpha · thr``, red
    otherwise), hollow yellow circles at the ground truth."""
    groups = list(selection.groupby(["dataset", "prompt", "matcher"], sort=False))
    ncols = max((len(g) for _, g in groups), default=1)
    fig, axes = plt.subplots(max(len(groups), 1), ncols, figsize=(3.6 * ncols, 2.4 * max(len(groups), 1) + 0.4),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, ((dataset, prompt, matcher), sel) in enumerate(groups):
        run = runs[(runs["dataset"] == dataset) & (runs["prompt"] == prompt)].iloc[0]
        ds = _open_run_dataset(run)
        index = {(e.pair_id, e.category): i for i, e in enumerate(ds.entries)}
        df = load_predictions(run.folder)
        df = df[df["matcher"] == matcher]
        for c, row in enumerate(sel.itertuples(index=False)):
            sample = ds[index[(row.pair_id, row.category)]]
            p = _pair_arrays(df, row.pair_id, row.category)
            pred = p[["pred_x", "pred_y"]].to_numpy(float)
            correct = pck_correct(pred, clamp_gt(p[["gt_x", "gt_y"]].to_numpy(float), int(run.img_size)),
                                  p["thr"].to_numpy(float), alpha)
            ax = axes[r, c]
            ax.axis("on")
            plot_matches(sample, pred, correct, ax=ax,
                         title=f"{row.which} {row.rank} · {BENCHMARK_NAMES.get(dataset, dataset)} · {row.category}\n"
                               f"{prompt} · PCK {row.pck:.0f}% ({row.n_correct}/{row.n_kps})")
            ax.title.set_fontsize(7)
    return _finish(fig, save, title)


# --------------------------------------------------------------------------------------------------------------
# notebook 03: the CPM's gate, and where one prompt's answer differs from another's
# --------------------------------------------------------------------------------------------------------------


def initial_cpm(trained, seed: int = 0):
    """The :class:`~sd4match_utils.conditioning.ConditionalPrompt` that training started from: same shapes as
    ``trained``, initialised from ``seed`` exactly as :func:`~sd4match_utils.train.make_prompt` does (no DINOv2
    attached)."""
    from .conditioning import ConditionalPrompt

    return ConditionalPrompt(trained.text_dim, trained.dino_dim, trained.n_global, trained.n_cond, trained.mode,
                             trained.features, trained.n_patches, trained.lr_linear, seed)


def plot_cpm_state(before, after, labels: tuple[str, str] = ("before training", "after training"),
                   title: str | None = None, save: str | Path | None = None) -> Figure:
    """What training did to a CPM's gate and tokens.

    Panels: (1) histogram of the gate values ``tanh(alpha_cond)`` (all ``C × D`` entries) before and after;
    (2) heat-map of the gate after training ``(C, D)``; (3) heat-map of its change; (4) L2 norm per token of
    ``global_embeds`` (tokens ``0..G-1``), ``positional_embedding`` and the gate (tokens ``G..G+C-1``), before
    (dashed) and after (solid) — :meth:`~sd4match_utils.conditioning.ConditionalPrompt.token_norms`.
    """
    g0, g1 = before.gate().numpy(), after.gate().numpy()
    n0, n1 = before.token_norms(), after.token_norms()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    ax = axes[0, 0]
    bins = np.linspace(-1, 1, 51)
    ax.hist(g0.ravel(), bins=bins, alpha=0.55, label=labels[0], color="#7f7f7f")
    ax.hist(g1.ravel(), bins=bins, alpha=0.55, label=labels[1], color="#1f77b4")
    ax.set_xlabel("gate value tanh(α)", fontsize=8)
    ax.set_ylabel("entries", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("gate values", fontsize=9)
    ax = axes[0, 1]
    im = ax.imshow(g1, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(f"gate tanh(α) {labels[1]} (C × D = {g1.shape[0]} × {g1.shape[1]})", fontsize=9)
    ax.set_xlabel("text channel", fontsize=8)
    ax.set_ylabel("conditional token", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1, 0]
    delta = g1 - g0
    lim = float(np.abs(delta).max()) or 1e-6
    im = ax.imshow(delta, aspect="auto", cmap="PuOr", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_title(f"gate change ({labels[1]} − {labels[0]}), max |Δ| = {lim:.3g}", fontsize=9)
    ax.set_xlabel("text channel", fontsize=8)
    ax.set_ylabel("conditional token", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1, 1]
    g = len(n0["global"])
    colours = {"global": "#2ca02c", "positional": "#ff7f0e", "gate": "#1f77b4"}
    for name, offset in (("global", 0), ("positional", g), ("gate", g)):
        xs = np.arange(len(n0[name])) + offset
        ax.plot(xs, n0[name].numpy(), "--", color=colours[name], alpha=0.7, linewidth=1)
        ax.plot(xs, n1[name].numpy(), "-", color=colours[name], linewidth=1.2, label=name)
    ax.axvline(g - 0.5, color="black", linewidth=0.6, alpha=0.5)
    ax.set_xlabel(f"prompt token (global 0..{g - 1} | conditional {g}..{g + len(n0['gate']) - 1})", fontsize=8)
    ax.set_ylabel("L2 norm", fontsize=8)
    ax.set_title(f"token norms ({labels[0]} dashed, {labels[1]} solid)", fontsize=9)
    ax.legend(fontsize=7)
    for a in axes.ravel():
        a.tick_params(labelsize=7)
    return _finish(fig, save, title)


def prediction_changes(pred_a: pd.DataFrame, pred_b: pd.DataFrame, matcher: str = "kernel_softmax",
                       alpha: float = 0.1, img_size: int = 768) -> pd.DataFrame:
    """Keypoint by keypoint, how prompt B's answer differs from prompt A's (same dataset, pairs and protocol).

    Args:
        pred_a, pred_b: predictions tables (:func:`load_predictions`) of the two prompts.
        matcher: the matcher compared.
        alpha: PCK α for correctness and for calling a move a change.
        img_size: the resized size both runs used (for the ground-truth clamp).

    Returns:
        :data:`CHANGE_COLUMNS`, one row per keypoint present in both: ``moved`` = distance between the two
        predictions (pixels of the resized image); ``changed`` = ``moved > alpha · thr`` or correctness differs;
        ``outcome`` = ``"fixed"`` (A wrong, B right), ``"broken"`` (A right, B wrong), ``"both right"``,
        ``"both wrong"``.
    """
    keys = ["pair_id", "category", "kp_index"]
    a = pred_a[pred_a["matcher"] == matcher]
    b = pred_b[pred_b["matcher"] == matcher]
    m = a[keys + ["src_x", "src_y", "gt_x", "gt_y", "thr", "pred_x", "pred_y"]].merge(
        b[keys + ["pred_x", "pred_y"]], on=keys, suffixes=("_a", "_b"), how="inner")
    if len(m) == 0:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    gt = clamp_gt(m[["gt_x", "gt_y"]].to_numpy(float), img_size)
    thr = m["thr"].to_numpy(float)
    m["correct_a"] = pck_correct(m[["pred_x_a", "pred_y_a"]].to_numpy(float), gt, thr, alpha)
    m["correct_b"] = pck_correct(m[["pred_x_b", "pred_y_b"]].to_numpy(float), gt, thr, alpha)
    m["moved"] = np.hypot(m["pred_x_a"] - m["pred_x_b"], m["pred_y_a"] - m["pred_y_b"])
    m["changed"] = (m["moved"] > alpha * thr) | (m["correct_a"] != m["correct_b"])
    m["outcome"] = np.select([~m["correct_a"] & m["correct_b"], m["correct_a"] & ~m["correct_b"],
                              m["correct_a"] & m["correct_b"]], ["fixed", "broken", "both right"], "both wrong")
    return m[list(CHANGE_COLUMNS)].reset_index(drop=True)


def change_summary(changes: pd.DataFrame) -> pd.DataFrame:
    """Per category (and ``"all"`` first): keypoints, changed keypoints, ``fixed``, ``broken`` and ``net`` =
    fixed − broken (keypoints B gets right that A got wrong, minus the reverse)."""
    rows = []
    groups = [("all", changes)] + [(c, g) for c, g in changes.groupby("category", sort=True)]
    for cat, g in groups:
        fixed, broken = int((g["outcome"] == "fixed").sum()), int((g["outcome"] == "broken").sum())
        rows.append({"category": cat, "keypoints": int(len(g)), "changed": int(g["changed"].sum()), "fixed": fixed,
                     "broken": broken, "net": fixed - broken})
    return pd.DataFrame(rows, columns=["category", "keypoints", "changed", "fixed", "broken", "net"])


def _changed_pairs(changes: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """The ``n`` pairs with the most changed keypoints (then most fixed + broken, then file order)."""
    g = changes.groupby(["pair_id", "category"], sort=False)
    stats = pd.DataFrame({"changed": g["changed"].sum(),
                          "decided": g["outcome"].agg(lambda s: int(s.isin(["fixed", "broken"]).sum()))})
    stats["order"] = np.arange(len(stats))
    stats = stats.sort_values(["changed", "decided", "order"], ascending=[False, False, True], kind="stable")
    return list(stats.index[:n])


def plot_prediction_changes(dataset, changes: pd.DataFrame, labels: tuple[str, str] = ("Class", "CPM"),
                            n_pairs: int = 3, title: str | None = None, save: str | Path | None = None) -> Figure:
    """Pairs where prompt B (e.g. CPM) answers differently from prompt A (e.g. Class), both predictions drawn.

    Source | target side by side (resized to the dataset's ``img_size``): numbered source keypoints; on the target
    the ground truth (hollow yellow), A's prediction (×) and B's (●), each green when within ``alpha · thr`` and
    red otherwise, and an arrow from A's to B's prediction for every changed keypoint. The pairs shown are those
    with the most changed keypoints (:func:`prediction_changes`).
    """
    from PIL import Image

    pairs = _changed_pairs(changes, n_pairs)
    index = {(e.pair_id, e.category): i for i, e in enumerate(dataset.entries)}
    s = int(dataset.img_size)
    fig, axes = plt.subplots(max(len(pairs), 1), 1, figsize=(7.2, 3.7 * max(len(pairs), 1)), squeeze=False)
    ok, wrong, gt_colour = "#1a9850", "#d73027", "#ffd92f"
    for ax, (pair_id, category) in zip(axes[:, 0], pairs):
        sample = dataset[index[(pair_id, category)]]
        canvas = np.concatenate([np.asarray(im.convert("RGB").resize((s, s), Image.BILINEAR))
                                 for im in (sample.src_image, sample.trg_image)], axis=1)
        ax.imshow(canvas)
        ax.axvline(s - 0.5, color="white", linewidth=1.0)
        rows = changes[(changes["pair_id"] == pair_id) & (changes["category"] == category)].sort_values("kp_index")
        for r in rows.itertuples(index=False):
            ax.scatter([r.src_x], [r.src_y], s=18, c="white", edgecolors="black", linewidths=0.6, zorder=3)
            ax.scatter([r.gt_x + s], [r.gt_y], s=42, facecolors="none", edgecolors=gt_colour, linewidths=1.2, zorder=3)
            ax.scatter([r.pred_x_a + s], [r.pred_y_a], s=30, marker="x", c=ok if r.correct_a else wrong,
                       linewidths=1.5, zorder=4)
            ax.scatter([r.pred_x_b + s], [r.pred_y_b], s=22, c=ok if r.correct_b else wrong, edgecolors="black",
                       linewidths=0.5, zorder=5)
            if r.changed:
                ax.annotate("", xy=(r.pred_x_b + s, r.pred_y_b), xytext=(r.pred_x_a + s, r.pred_y_a),
                            arrowprops={"arrowstyle": "->", "color": "white", "lw": 1.0}, zorder=4)
                ax.text(r.src_x + 3, r.src_y - 3, str(int(r.kp_index)), color="white", fontsize=6, zorder=5)
        n = len(rows)
        ax.set_title(f"{category} · {pair_id}: {labels[0]} {int(rows['correct_a'].sum())}/{n} → {labels[1]} "
                     f"{int(rows['correct_b'].sum())}/{n} correct · {int(rows['changed'].sum())} changed "
                     f"(× {labels[0]}, ● {labels[1]})", fontsize=7)
        ax.set_xlim(-0.5, 2 * s - 0.5)
        ax.set_ylim(s - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if not pairs:
        axes[0, 0].text(0.5, 0.5, "no pairs", ha="center", va="center")
        axes[0, 0].axis("off")
    return _finish(fig, save, title)
