"""Benchmark evaluation: many prompts × many datasets under the paper's test protocol, as tidy tables
(notebooks 03 and 04; the figures are in :mod:`~sd4match_utils.viz`).

* :func:`run_benchmark` evaluates every ``(dataset, prompt)`` with :func:`~sd4match_utils.evaluate.run_evaluation`
  into ``runs_dir/<dataset>/<prompt name>/``, reusing a finished evaluation with the same settings, data, model and
  prompt *file content*, resuming an interrupted one, redoing one made with other settings. Empty dataset roots
  stand for the embedded synthetic data.
* :func:`results_table` (:data:`RESULT_COLUMNS`) and :func:`flag_table` (:data:`FLAG_COLUMNS`, SPair-71k's
  difficulty flags): PCK with its count and a bootstrap confidence interval; :func:`category_table`,
  :func:`headline_table` and :func:`select` are views of them.
* :func:`load_reference` / :func:`compare_with_reference`: the published numbers shipped with the package
  (``reference_results.csv``) beside ours.
* :func:`pair_table` / :func:`best_worst`: per-pair PCK and the best and worst pairs;
  :func:`prediction_changes`: where one prompt's answer differs from another's.

PCK follows SPEC §7: ``resized`` space (the paper's) or ``original`` pixels; ``per_image`` (the paper's number)
or ``per_point`` averaging; percent (0–100).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write_json, file_sha256, read_json
from .conditioning import FIXED_PROMPTS, inspect_prompt_file
from .evaluate import PAPER_TEST_SETTINGS, EvalSettings, parse_matchers, run_evaluation
from .metrics import ALPHAS, SPACES, bootstrap_ci, clamp_gt, pck_by_flag, pck_correct, pck_records
from .settings import result_fields

__all__ = [
    "BENCHMARK_NAMES", "CHANGE_COLUMNS", "COMPARISON_COLUMNS", "FLAG_COLUMNS", "NOT_COMPARABLE", "PAIR_COLUMNS",
    "PCK_METRICS", "REFERENCE_FILE", "REFERENCE_METHODS", "RESULT_COLUMNS", "RUN_COLUMNS", "SPAIR_FLAGS",
    "PAPER_PROTOCOL", "best_worst", "category_table", "compare_with_reference", "eval_settings", "flag_table", "headline_table",
    "load_predictions", "load_reference", "normalise_prompts", "pair_table", "prediction_changes", "prompt_kind",
    "prompt_name", "resolve_datasets", "results_table", "row_label", "run_benchmark", "run_tag", "select",
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

_SIDE_FILE = "benchmark.json"


#: The paper's test protocol as :class:`~sd4match_utils.evaluate.EvalSettings` values (SPEC §2, §6, §7:
#: ``up_blocks[1]``, t = 50, 8 noise copies, every matcher reported, all test pairs); a benchmark's ``protocol``
#: overrides any of them.
PAPER_PROTOCOL = dict(layer=PAPER_TEST_SETTINGS["layer"], timestep=PAPER_TEST_SETTINGS["timestep"],
                      ensemble=PAPER_TEST_SETTINGS["ensemble"], matchers="all")


def eval_settings(protocol: Mapping, dataset: str, data_root: str | Path, prompt: str) -> EvalSettings:
    """The :class:`~sd4match_utils.evaluate.EvalSettings` of one ``(dataset, prompt)`` evaluation.

    ``protocol`` holds the settings every evaluation of a benchmark shares (any field of ``EvalSettings``; unset
    ones are :data:`PAPER_PROTOCOL`'s, then ``EvalSettings``'s defaults). ``matchers`` may be a comma list or
    ``"all"``; ``limit`` / ``img_size`` of 0 mean all pairs / the model's native size. The data root and prompt
    file are made absolute, so a run started from another folder still finds and reuses its work.

    Raises:
        ValueError: an unknown matcher.
        TypeError: a key that is not a setting.
    """
    values = {**PAPER_PROTOCOL, **protocol}
    names = values["matchers"].split(",") if isinstance(values["matchers"], str) else list(values["matchers"])
    values["matchers"] = parse_matchers([m.strip() for m in names if m.strip()] or "all")
    values["limit"] = int(values["limit"]) if values.get("limit") else None
    values["img_size"] = int(values["img_size"]) if values.get("img_size") else None
    if str(prompt) not in FIXED_PROMPTS:
        prompt = str(Path(prompt).expanduser().resolve())
    return EvalSettings(dataset=dataset, data_root=str(Path(data_root).expanduser().resolve()), prompt=str(prompt),
                        **values)


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
    ``cpm``), read from its header (:func:`~sd4match_utils.conditioning.inspect_prompt_file`) without loading a
    model. Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for one that is not a prompt file."""
    spec = str(spec)
    return spec if spec in FIXED_PROMPTS else inspect_prompt_file(Path(spec).expanduser()).get("kind", "unknown")


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
    from .report import dataset_tag, model_tag

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
    numbers come from an embedded model (tiny, mini) and / or synthetic data."""
    label = f"{model} · {prompt}"
    embedded = {"tiny": "tiny (random weights)", "mini": "mini (embedded model)"}.get(model)
    if embedded:
        return f"{label} [{embedded}{', synthetic data' if synthetic else ''} — not comparable]"
    if synthetic:
        return f"{label} [synthetic data — not comparable]"
    return label


def _run_key(es: EvalSettings) -> dict:
    """What must be equal for a finished evaluation to be reused: the settings (prompt path replaced by the file's
    content hash, data root resolved) minus those that do not change predictions."""
    key = result_fields(es)
    if es.prompt not in FIXED_PROMPTS:
        key["prompt"] = "sha256:" + file_sha256(Path(es.prompt).expanduser())
    return json.loads(json.dumps(key, default=str))


def _evaluate_one(es: EvalSettings, folder: Path, get_sd, progress: bool, shard_size: int) -> tuple[dict, str, float]:
    """Evaluate one ``(dataset, prompt)`` into ``folder`` unless a finished matching run is there.

    Returns ``(metrics, status, seconds)`` with status ``"reused"``, ``"resumed"`` or ``"computed"``."""
    key = _run_key(es)
    side = read_json(folder / _SIDE_FILE)
    metrics = read_json(folder / "metrics.json")
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
    protocol: Mapping | None = None,
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
        protocol: the settings every evaluation shares (:func:`eval_settings`; default: :data:`PAPER_PROTOCOL`).
        runs_dir: where the evaluations live.
        synthetic_root: folder of the embedded synthetic data (needed only for empty roots).
        sd: an already loaded model (default: loaded on first need from the protocol's model, device, precision).
        progress: tqdm bars per evaluation.
        shard_size: pairs per saved shard (how much work a kill can lose).

    Returns:
        The runs table, :data:`RUN_COLUMNS`, one row per dataset × prompt in the order given; ``status`` is
        ``"reused"``, ``"resumed"`` or ``"computed"``; ``seconds`` the time spent now.
    """
    protocol = dict(protocol or {})
    named = normalise_prompts(prompts)
    kinds = {name: prompt_kind(spec) for name, spec in named.items()}  # fails early on a missing file
    resolved = resolve_datasets(datasets, synthetic_root)
    jobs = {(dataset, name): eval_settings(protocol, dataset, root, spec)  # fails early on a bad setting
            for dataset, (root, _) in resolved.items() for name, spec in named.items()}
    holder = {"sd": sd}

    def get_sd(loaded_only: bool = False):
        if holder["sd"] is None and not loaded_only:
            from .models import load_sd

            first = next(iter(jobs.values()))
            holder["sd"] = load_sd(first.model, device=first.device, precision=first.precision)
        return holder["sd"]

    rows = []
    for dataset, (root, synthetic) in resolved.items():
        for name, spec in named.items():
            es = jobs[dataset, name]
            folder = Path(runs_dir) / dataset / name
            metrics, status, seconds = _evaluate_one(es, folder, get_sd, progress, shard_size)
            rows.append({"dataset": dataset, "prompt": name, "spec": spec, "kind": kinds[name], "root": str(root),
                         "synthetic": synthetic, "split": es.split,
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


def _runs_iter(runs: pd.DataFrame, model: str | None):
    """``(run row, predictions, the columns naming the run)`` of every run."""
    for run in runs.itertuples(index=False):
        name = model or (read_json(Path(run.folder) / "metrics.json") or {}).get("settings", {}).get("model", "?")
        head = {"dataset": run.dataset, "benchmark": BENCHMARK_NAMES.get(run.dataset, run.dataset),
                "prompt": run.prompt, "kind": run.kind, "model": name,
                "label": row_label(name, run.prompt, bool(run.synthetic))}
        yield run, load_predictions(run.folder), head


def _with_ci(part: pd.DataFrame, r: dict, img_size: int, n_boot: int, level: float, seed: int) -> dict:
    """A PCK record of :mod:`~sd4match_utils.metrics` with its bootstrap interval over the pairs of ``part``."""
    lo = hi = math.nan
    if len(part) and n_boot >= 1:
        lo, hi = bootstrap_ci(part, alpha=r["alpha"], averaging=r["averaging"], space=r["space"], n_boot=n_boot,
                              level=level, seed=seed, img_size=img_size)
    return {**r, "alpha": float(r["alpha"]), "ci_low": lo, "ci_high": hi}


def results_table(runs: pd.DataFrame, alphas: Sequence[float] = ALPHAS, spaces: Sequence[str] = SPACES,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0, by_category: bool = True,
                  model: str | None = None) -> pd.DataFrame:
    """Tidy PCK of every run of :func:`run_benchmark`: :data:`RESULT_COLUMNS`, one row per dataset × prompt ×
    matcher × α × averaging × space × category (``"all"``, then each category with ``by_category``).

    ``pck``, ``ci_low``, ``ci_high`` are percent; ``n`` counts pairs (``per_image``) or keypoints (``per_point``);
    the interval is :func:`~sd4match_utils.metrics.bootstrap_ci` over the pairs (``n_boot=0``: none, NaN).
    ``model`` names the model in ``model`` / ``label`` (default: the one each run recorded)."""
    rows = []
    for run, df, head in _runs_iter(runs, model):
        for matcher, sub in df.groupby("matcher", sort=True):
            for r in pck_records(sub, alphas=alphas, spaces=spaces, img_size=run.img_size, by_category=by_category):
                part = sub if r["category"] == "all" else sub[sub["category"] == r["category"]]
                rows.append({**head, "matcher": matcher, **_with_ci(part, r, run.img_size, n_boot, level, seed)})
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def flag_table(runs: pd.DataFrame, flags: Sequence[str] = SPAIR_FLAGS,
               matchers: Sequence[str] | None = ("kernel_softmax",), alphas: Sequence[float] = ALPHAS,
               spaces: Sequence[str] = ("resized",), n_boot: int = 1000, level: float = 0.95, seed: int = 0,
               model: str | None = None) -> pd.DataFrame:
    """PCK split by per-pair difficulty flags (SPair-71k's viewpoint, scale, truncation and occlusion levels) with
    :func:`~sd4match_utils.metrics.pck_by_flag`: :data:`FLAG_COLUMNS`, one row per dataset × prompt × matcher × flag
    × value (``"all"`` first) × α × averaging × space, intervals as in :func:`results_table`. Runs whose
    predictions lack a flag column are skipped."""
    rows = []
    for run, df, head in _runs_iter(runs, model):
        if matchers is not None:
            df = df[df["matcher"].isin(list(matchers))]
        for flag in [f for f in flags if f in df.columns and len(df)]:
            for matcher, sub in df.groupby("matcher", sort=True):
                for r in pck_by_flag(sub, flag, alphas=alphas, spaces=spaces, img_size=run.img_size):
                    value = r.pop(flag)
                    part = sub if value == "all" else sub[sub[flag] == value]
                    rows.append({**head, "matcher": matcher, "flag": flag,
                                 "value": value if value == "all" else int(value),
                                 **_with_ci(part, r, run.img_size, n_boot, level, seed)})
    return pd.DataFrame(rows, columns=list(FLAG_COLUMNS))


def pair_table(runs: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1) -> pd.DataFrame:
    """Per-pair PCK@``alpha`` (resized space, percent) of one matcher for every run: :data:`PAIR_COLUMNS`, pairs in
    file order (``order``)."""
    frames = []
    for run, df, _ in _runs_iter(runs, None):
        df = df[df["matcher"] == matcher]
        correct = pck_correct(df[["pred_x", "pred_y"]].to_numpy(float),
                              clamp_gt(df[["gt_x", "gt_y"]].to_numpy(float), run.img_size),
                              df["thr"].to_numpy(float), alpha) if len(df) else []
        g = df[["category", "pair_id"]].assign(correct=correct).groupby(["category", "pair_id"], sort=False)
        pairs = g["correct"].agg(n_kps="size", n_correct="sum").reset_index()
        frames.append(pairs.assign(dataset=run.dataset, prompt=run.prompt, matcher=matcher, alpha=float(alpha),
                                   order=np.arange(len(pairs)), n_correct=pairs["n_correct"].astype(int),
                                   pck=100.0 * pairs["n_correct"] / pairs["n_kps"]))
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
    prompt with no method, and reference rows with no counterpart among ours, are left out (names take precedence
    over kinds). ``matcher`` and ``space`` pick our rows that stand for the paper's protocol; ``reference``
    defaults to :func:`load_reference`.

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



def prediction_changes(pred_a: pd.DataFrame, pred_b: pd.DataFrame, matcher: str = "kernel_softmax",
                       alpha: float = 0.1, img_size: int = 768) -> pd.DataFrame:
    """Keypoint by keypoint, how prompt B's answer differs from prompt A's (predictions tables of the same dataset,
    pairs and protocol; ``img_size``: the resized size both used). Returns :data:`CHANGE_COLUMNS`, one row per
    keypoint in both: ``moved`` = distance between the two predictions (resized pixels); ``changed`` = ``moved >
    alpha · thr`` or correctness differs; ``outcome`` = ``"fixed"`` (A wrong, B right), ``"broken"`` (A right, B
    wrong), ``"both right"`` or ``"both wrong"``."""
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

