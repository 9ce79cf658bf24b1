"""Benchmark evaluation: many prompts × many datasets under the paper's test protocol, as tidy tables
(notebooks 03 and 04; the figures are in :mod:`~sd4match_utils.viz`).

:func:`run_benchmark` evaluates every ``(dataset, prompt)`` into ``runs_dir/<dataset>/<prompt name>/``;
:func:`results_table`, :func:`flag_table` and :func:`pair_table` read the runs back; :func:`compare_with_reference`
sets them beside the published numbers (``reference_results.csv``). PCK follows SPEC §7: ``resized`` (the paper's)
or ``original`` space, ``per_image`` (the paper's) or ``per_point`` averaging, percent (0–100).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write_json, file_sha256, read_json
from .conditioning import FIXED_PROMPTS, inspect_prompt_file
from .data import BENCHMARKS, resolve_root
from .data.spair import FLAG_KEYS
from .evaluate import PAPER_TEST_SETTINGS, EvalSettings, parse_matchers, run_evaluation
from .metrics import ALPHAS, SPACES, bootstrap_ci, correct_rows, pck_by_flag, pck_records
from .report import dataset_tag, model_tag, safe_name
from .settings import result_fields

__all__ = [
    "BENCHMARK_NAMES", "CHANGE_COLUMNS", "COMPARISON_COLUMNS", "FLAG_COLUMNS", "NOT_COMPARABLE", "PAIR_COLUMNS",
    "PCK_METRICS", "REFERENCE_FILE", "REFERENCE_METHODS", "RESULT_COLUMNS", "RUN_COLUMNS", "SPAIR_FLAGS",
    "PAPER_PROTOCOL", "best_worst", "category_table", "compare_with_reference", "eval_settings", "flag_table",
    "headline_table", "load_predictions", "load_reference", "normalise_prompts", "pair_table", "prediction_changes",
    "prompt_kind", "prompt_name", "resolve_datasets", "results_table", "row_label", "run_benchmark", "run_tag",
    "select",
]

#: Dataset key → benchmark name used in the reference table.
BENCHMARK_NAMES = {"spair": "SPair-71k", "pfpascal": "PF-Pascal", "pfwillow": "PF-Willow"}
#: Dataset key → the PCK threshold protocol's name in the reference table (SPEC §7).
PCK_METRICS = {"spair": "PCK_bbox", "pfpascal": "PCK_img", "pfwillow": "PCK_bbox_kp"}
#: SPair-71k's per-pair difficulty flags (predictions columns).
SPAIR_FLAGS = FLAG_KEYS
RUN_COLUMNS = ("dataset", "prompt", "spec", "kind", "root", "synthetic", "split", "img_size", "folder", "status",
               "seconds", "n_pairs", "n_keypoints")
RESULT_COLUMNS = ("dataset", "benchmark", "prompt", "kind", "model", "label", "matcher", "alpha", "averaging",
                  "space", "category", "pck", "n", "ci_low", "ci_high")
#: ``value`` is ``"all"`` or one value of the flag.
FLAG_COLUMNS = ("dataset", "prompt", "kind", "model", "label", "matcher", "flag", "value", "alpha", "averaging",
                "space", "pck", "n", "ci_low", "ci_high")
#: ``order``: position of the pair in the predictions file.
PAIR_COLUMNS = ("dataset", "prompt", "matcher", "alpha", "order", "pair_id", "category", "n_kps", "n_correct", "pck")
COMPARISON_COLUMNS = ("method", "benchmark", "category", "metric", "alpha", "averaging", "reference", "confidence",
                      "label", "dataset", "prompt", "matcher", "ours", "ci_low", "ci_high", "difference",
                      "comparable", "note")
#: ``_a``: the first prompt, ``_b``: the second.
CHANGE_COLUMNS = ("pair_id", "category", "kp_index", "src_x", "src_y", "gt_x", "gt_y", "thr", "pred_x_a", "pred_y_a",
                  "correct_a", "pred_x_b", "pred_y_b", "correct_b", "moved", "changed", "outcome")

#: The published numbers shipped with the package (see its ``source`` and ``confidence`` columns).
REFERENCE_FILE = Path(__file__).with_name("reference_results.csv")
#: Prompt kind → the reference method our rows are compared with: zero-shot prompts ↔ DIFT, the published zero-shot
#: SD 2-1 read-out (t = 261, nothing learned); Single and Class prompts have no reprinted number.
REFERENCE_METHODS = {"cpm": "SD4Match-CPM", "text": "DIFT (SD2-1 zero-shot)", "empty": "DIFT (SD2-1 zero-shot)"}
#: How rows made with the embedded default are labelled.
NOT_COMPARABLE = "tiny (random weights), synthetic data — not comparable"
#: The paper's test protocol (SPEC §2, §6, §7: ``up_blocks[1]``, t = 50, 8 noise copies, every matcher).
PAPER_PROTOCOL = {**{k: PAPER_TEST_SETTINGS[k] for k in ("layer", "timestep", "ensemble")}, "matchers": "all"}

_SIDE_FILE = "benchmark.json"


def eval_settings(protocol: Mapping, dataset: str, data_root: str | Path, prompt: str) -> EvalSettings:
    """The settings of one ``(dataset, prompt)`` evaluation: ``protocol`` over :data:`PAPER_PROTOCOL` over the
    defaults. ``matchers``: a comma list or ``"all"``; ``limit`` / ``img_size`` of 0: all pairs / native size. Paths
    are made absolute, so a run started from another folder still finds and reuses its work."""
    values = {**PAPER_PROTOCOL, **protocol}
    names = values["matchers"].split(",") if isinstance(values["matchers"], str) else list(values["matchers"])
    values["matchers"] = parse_matchers([m.strip() for m in names if m.strip()] or "all")
    for key in ("limit", "img_size"):
        values[key] = int(values[key]) if values.get(key) else None
    if str(prompt) not in FIXED_PROMPTS:
        prompt = str(Path(prompt).expanduser().resolve())
    return EvalSettings(dataset=dataset, data_root=str(Path(data_root).expanduser().resolve()), prompt=str(prompt),
                        **values)


def _safe(text: str) -> str:
    return safe_name(text) or "prompt"


def prompt_name(spec: str | Path) -> str:
    """A file-system-safe name for a prompt: fixed prompts stay; ``<run>/prompt_best.safetensors`` and
    ``<folder>/prompt.safetensors`` → the folder (``prompt_last``: ``"<run>-last"``); any other file → its stem."""
    spec = str(spec)
    if spec in FIXED_PROMPTS:
        return spec
    path = Path(spec)
    if path.stem in ("prompt_best", "prompt", "prompt_last") and path.parent.name:
        return _safe(path.parent.name + ("-last" if path.stem == "prompt_last" else ""))
    return _safe(path.stem)


def prompt_kind(spec: str | Path) -> str:
    """``"empty"`` / ``"text"``, or the ``kind`` a prompt file's header records (no model is loaded)."""
    spec = str(spec)
    return spec if spec in FIXED_PROMPTS else inspect_prompt_file(Path(spec).expanduser()).get("kind", "unknown")


def normalise_prompts(prompts: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``name → spec`` for specs (named by :func:`prompt_name`, made unique with ``-2``, ``-3``…) or a mapping."""
    items = list(prompts.items()) if isinstance(prompts, Mapping) else [(prompt_name(p), str(p)) for p in prompts]
    if not items:
        raise ValueError("no prompts to evaluate")
    out: dict[str, str] = {}
    for base, spec in items:
        name = base = _safe(base)
        k = 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out[name] = str(spec)
    return out


def resolve_datasets(datasets: Mapping[str, str | Path], synthetic_root: str | Path | None = None
                     ) -> dict[str, tuple[Path, bool]]:
    """``dataset → (root, synthetic)`` of benchmarks, by :func:`~sd4match_utils.data.resolve_root`."""
    out = {}
    for name, root in datasets.items():
        if name not in BENCHMARKS:
            raise ValueError(f"unknown dataset {name!r}; expected some of {BENCHMARKS}")
        out[name] = resolve_root(name, root, synthetic_root)
    return out


def run_tag(model: str, synthetic: Mapping[str, bool]) -> str:
    """``<model-tag>_<datasets>`` for output names, e.g. ``tiny_spair-pfpascal-synthetic``."""
    if not synthetic:
        raise ValueError("no datasets")
    flags = set(synthetic.values())
    if len(flags) == 1:
        return f"{model_tag(model)}_{dataset_tag('-'.join(synthetic), flags.pop())}"
    return f"{model_tag(model)}_" + "-".join(dataset_tag(d, s) for d, s in synthetic.items())


def row_label(model: str, prompt: str, synthetic: bool) -> str:
    """``"<model> · <prompt>"``, with a warning when an embedded model (tiny, mini) or synthetic data made it."""
    label = f"{model} · {prompt}"
    embedded = {"tiny": "tiny (random weights)", "mini": "mini (embedded model)"}.get(model)
    if embedded:
        return f"{label} [{embedded}{', synthetic data' if synthetic else ''} — not comparable]"
    if synthetic:
        return f"{label} [synthetic data — not comparable]"
    return label


def _evaluate_one(es: EvalSettings, folder: Path, get_sd, progress: bool, shard_size: int) -> tuple[dict, str, float]:
    """``(metrics, status, seconds)`` of one evaluation into ``folder``, reusing a finished one with the same key."""
    key = result_fields(es)  # the settings that change predictions, the prompt file by its content
    if es.prompt not in FIXED_PROMPTS:
        key["prompt"] = "sha256:" + file_sha256(Path(es.prompt).expanduser())
    key = json.loads(json.dumps(key, default=str))
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
    evaluate = partial(run_evaluation, es, folder, progress=progress, shard_size=shard_size)
    resume = same  # shards of this very job (an interrupted run) are reused; anything else starts afresh
    try:
        metrics = evaluate(sd=get_sd(), resume=resume)
    except ValueError as e:
        if not (resume and "cannot resume" in str(e)):
            raise
        resume = False
        metrics = evaluate(sd=get_sd(), resume=False)
    seconds = time.perf_counter() - t0
    atomic_write_json(folder / _SIDE_FILE, {"key": key, "status": "done", "seconds": round(seconds, 3)})
    status = "resumed" if resume and metrics["run"]["pairs_from_earlier_runs"] > 0 else "computed"
    return metrics, status, seconds


def run_benchmark(datasets: Mapping[str, str | Path], prompts: Sequence[str] | Mapping[str, str],
                  protocol: Mapping | None = None, runs_dir: str | Path = "runs/benchmark",
                  synthetic_root: str | Path | None = None, sd=None, progress: bool = False,
                  shard_size: int = 200) -> pd.DataFrame:
    """Evaluate every prompt on every dataset into ``runs_dir/<dataset>/<prompt name>/``; the runs table
    (:data:`RUN_COLUMNS`, ``status``: ``"reused"``, ``"resumed"`` or ``"computed"``).

    A finished run with the same settings and prompt file content (hashed in ``benchmark.json``) is reused without
    loading the model (a given ``sd`` must match its weight fingerprint); a killed one is resumed from its shards.
    ``datasets``: ``dataset → root`` (empty: the embedded synthetic data under ``synthetic_root``); ``prompts``:
    specs or ``{name: spec}``; ``protocol``: the settings every evaluation shares (:func:`eval_settings`).
    """
    named = normalise_prompts(prompts)
    kinds = {name: prompt_kind(spec) for name, spec in named.items()}  # fails early on a missing file
    resolved = resolve_datasets(datasets, synthetic_root)
    jobs = {(dataset, name): eval_settings(protocol or {}, dataset, root, spec)  # fails early on a bad setting
            for dataset, (root, _) in resolved.items() for name, spec in named.items()}

    def get_sd(loaded_only: bool = False):
        nonlocal sd
        if sd is None and not loaded_only:
            from .models import load_sd  # looked up when called, so that tests can stand in for it

            first = next(iter(jobs.values()))
            sd = load_sd(first.model, device=first.device, precision=first.precision)
        return sd

    rows = []
    for (dataset, name), es in jobs.items():
        root, synthetic = resolved[dataset]
        folder = Path(runs_dir) / dataset / name
        metrics, status, seconds = _evaluate_one(es, folder, get_sd, progress, shard_size)
        rows.append({"dataset": dataset, "prompt": name, "spec": named[name], "kind": kinds[name], "root": str(root),
                     "synthetic": synthetic, "split": es.split, "img_size": int(metrics["settings"]["img_size"]),
                     "folder": str(folder), "status": status, "seconds": round(seconds, 3),
                     "n_pairs": int(metrics["dataset"]["n_pairs"]),
                     "n_keypoints": int(metrics["dataset"]["n_keypoints"])})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def load_predictions(folder: str | Path) -> pd.DataFrame:
    """``folder/predictions.csv`` with identifiers read as strings (pair ids such as ``"00012"`` keep their zeros)."""
    text_cols = ("pair_id", "category", "kp_name", "src_name", "trg_name")
    df = pd.read_csv(Path(folder) / "predictions.csv", dtype={c: str for c in text_cols})
    return df.fillna({c: "" for c in text_cols})


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
    """Tidy PCK of the runs of :func:`run_benchmark` (:data:`RESULT_COLUMNS`; category ``"all"``, then each one with
    ``by_category``); ``n`` counts pairs or keypoints, ``n_boot=0`` gives no interval (NaN)."""
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
    """PCK split by per-pair difficulty flags (:func:`~sd4match_utils.metrics.pck_by_flag`, :data:`FLAG_COLUMNS`),
    intervals as in :func:`results_table`; runs whose predictions lack a flag column are skipped."""
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
    """Per-pair PCK@``alpha`` (resized space, percent) of one matcher for every run (:data:`PAIR_COLUMNS`)."""
    frames = []
    for run, df, _ in _runs_iter(runs, None):
        df = df[df["matcher"] == matcher]
        correct = correct_rows(df, alpha, img_size=run.img_size) if len(df) else []
        g = df[["category", "pair_id"]].assign(correct=correct).groupby(["category", "pair_id"], sort=False)
        pairs = g["correct"].agg(n_kps="size", n_correct="sum").reset_index()
        frames.append(pairs.assign(dataset=run.dataset, prompt=run.prompt, matcher=matcher, alpha=float(alpha),
                                   order=np.arange(len(pairs)), n_correct=pairs["n_correct"].astype(int),
                                   pck=100.0 * pairs["n_correct"] / pairs["n_kps"]))
    if not frames:
        return pd.DataFrame(columns=list(PAIR_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(PAIR_COLUMNS)]


def best_worst(pairs: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` best and ``n`` worst pairs by per-pair PCK within each dataset × prompt × matcher, with ``which``
    (``"best"`` / ``"worst"``) and ``rank`` in front. Ties: more keypoints first, then file order; a pair is never
    both (with fewer than ``2n`` pairs the worst list is shorter)."""
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
    """The published numbers (default: :data:`REFERENCE_FILE`), a ``benchmark`` such as ``"SPair-71k/aeroplane"``
    split into ``benchmark`` and ``category`` (``"all"`` otherwise)."""
    ref = pd.read_csv(path or REFERENCE_FILE, dtype=str, keep_default_na=False)
    missing = {"method", "benchmark", "metric", "alpha", "averaging", "value", "confidence"} - set(ref.columns)
    if missing:
        raise ValueError(f"{path or REFERENCE_FILE}: reference table lacks the columns {sorted(missing)}")
    split = ref["benchmark"].str.split("/", n=1, expand=True)
    ref["benchmark"] = split[0]
    ref.insert(2, "category", split[1].fillna("all") if split.shape[1] > 1 else "all")
    ref[["alpha", "value"]] = ref[["alpha", "value"]].astype(float)
    for col in ("note", "source"):
        if col not in ref.columns:
            ref[col] = ""
    return ref[["method", "benchmark", "category", "metric", "alpha", "averaging", "value", "confidence", "note",
                "source"]]


def compare_with_reference(results: pd.DataFrame, reference: pd.DataFrame | None = None,
                           methods: Mapping[str, str] | None = None, matcher: str = "kernel_softmax",
                           space: str = "resized") -> pd.DataFrame:
    """Our numbers beside the published ones (:data:`COMPARISON_COLUMNS`), matched on method, benchmark, category, α
    and averaging; ``difference = ours − reference``; ``comparable`` is False for embedded-model rows.

    A prompt stands for a reference method through its name, else its kind (``methods``, default
    :data:`REFERENCE_METHODS`); ``matcher`` and ``space`` pick our rows that stand for the paper's protocol."""
    reference = load_reference() if reference is None else reference
    methods = dict(REFERENCE_METHODS if methods is None else methods)
    ours = results[(results["matcher"] == matcher) & (results["space"] == space)].copy()
    ours["method"] = [methods.get(p, methods.get(k)) for p, k in zip(ours["prompt"], ours["kind"])]
    ours = ours[ours["method"].notna()]
    if ours.empty:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    ours["alpha_key"] = ours["alpha"].round(4)
    ref = reference.rename(columns={"value": "reference", "note": "ref_note"})
    merged = ref.assign(alpha_key=ref["alpha"].round(4)).drop(columns=["alpha"]).merge(
        ours.rename(columns={"pck": "ours"}), on=["method", "benchmark", "category", "alpha_key", "averaging"])
    merged["alpha"] = merged["alpha_key"]
    merged["difference"] = merged["ours"] - merged["reference"]
    merged["comparable"] = ~merged["label"].str.contains("not comparable", regex=False)

    def note(row) -> str:
        parts = []
        if row["method"].startswith("DIFT"):
            parts.append("closest published zero-shot SD 2-1 read-out (DIFT: t = 261, no learned prompt)")
        if row["ref_note"]:
            parts.append(f"reference: {row['ref_note']}")
        return "; ".join([*parts, f"confidence: {row['confidence']}"])

    merged["note"] = merged.apply(note, axis=1) if len(merged) else []
    order = {m: i for i, m in enumerate(dict.fromkeys(reference["method"]))}
    merged["_m"] = merged["method"].map(order)
    merged["_c"] = merged["category"] != "all"
    merged = merged.sort_values(["_m", "benchmark", "_c", "category", "averaging", "alpha", "prompt"], kind="stable")
    return merged[list(COMPARISON_COLUMNS)].reset_index(drop=True)


def select(frame: pd.DataFrame, **conditions) -> pd.DataFrame:
    """Rows where every given column equals its value (``None`` = any; ``alpha`` with a tolerance), e.g.
    ``select(results, matcher="kernel_softmax", alpha=0.1, category="all")``."""
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
    """PCK per category (rows, ``"all"`` first) and prompt (columns, in ``prompts`` order or first appearance)."""
    frame = select(results, dataset=dataset, matcher=matcher, alpha=alpha, averaging=averaging, space=space)
    prompts = list(prompts) if prompts is not None else list(dict.fromkeys(frame["prompt"]))
    table = frame.pivot_table(index="category", columns="prompt", values="pck", aggfunc="first")
    order = sorted(table.index, key=lambda c: (c != "all", str(c)))
    return table.reindex(index=order, columns=[p for p in prompts if p in table.columns])


def headline_table(results: pd.DataFrame, matcher: str = "kernel_softmax", space: str = "resized",
                   category: str = "all", with_ci: bool = True, digits: int = 1) -> pd.DataFrame:
    """The overall numbers: rows ``(benchmark, prompt)``, columns ``PCK@α <averaging>`` (per image first); cells
    ``"pck [ci_low, ci_high]"`` rounded to ``digits`` with ``with_ci``, else the PCK as a float."""
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
    """Keypoint by keypoint, how prompt B's predictions differ from prompt A's (:data:`CHANGE_COLUMNS`): ``moved``
    (resized pixels), ``changed`` (``moved > alpha · thr`` or correctness differs), ``outcome`` (``"fixed"``,
    ``"broken"``, ``"both right"``, ``"both wrong"``); ``img_size``: the resized size both used."""
    keys = ["pair_id", "category", "kp_index"]
    a = pred_a[pred_a["matcher"] == matcher]
    b = pred_b[pred_b["matcher"] == matcher]
    m = a[keys + ["src_x", "src_y", "gt_x", "gt_y", "thr", "pred_x", "pred_y"]].merge(
        b[keys + ["pred_x", "pred_y"]], on=keys, suffixes=("_a", "_b"), how="inner")
    if len(m) == 0:
        return pd.DataFrame(columns=list(CHANGE_COLUMNS))
    for s in "ab":
        m[f"correct_{s}"] = correct_rows(m, alpha, img_size=img_size, pred=(f"pred_x_{s}", f"pred_y_{s}"))
    m["moved"] = np.hypot(m["pred_x_a"] - m["pred_x_b"], m["pred_y_a"] - m["pred_y_b"])
    m["changed"] = (m["moved"] > alpha * m["thr"].to_numpy(float)) | (m["correct_a"] != m["correct_b"])
    m["outcome"] = np.select([~m["correct_a"] & m["correct_b"], m["correct_a"] & ~m["correct_b"],
                              m["correct_a"] & m["correct_b"]], ["fixed", "broken", "both right"], "both wrong")
    return m[list(CHANGE_COLUMNS)].reset_index(drop=True)
