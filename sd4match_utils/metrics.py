"""PCK — percentage of correct keypoints — in the protocol variants of SPEC §7.

The evaluation writes a *predictions table*: a ``pandas.DataFrame`` with one row per keypoint and the columns

``pair_id, category, kp_index, src_x, src_y, gt_x, gt_y, thr, pred_x, pred_y, matcher``
    coordinates and threshold in the resized ``img_size × img_size`` image (the paper's space);
``gt_x_orig, gt_y_orig, pred_x_orig, pred_y_orig, thr_orig``
    the same in original target-image pixels (only needed for ``space="original"``).

A keypoint is correct when ``‖pred − gt‖₂ ≤ α · thr``. In the resized space the ground truth is first
clamped into ``[1e-4, img_size − 1 − 1e-4]`` as the paper does; the original space uses the ``_orig``
columns unclamped. Two averages are reported:

``per_image`` (the paper's)
    the mean over each pair's keypoints, then the mean over pairs (a category: over its pairs);
``per_point``
    the mean over all keypoints.

Pairs are identified by ``(category, pair_id)`` within each matcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "ALPHAS",
    "AVERAGINGS",
    "SPACES",
    "GT_CLAMP_EPS",
    "pck_correct",
    "clamp_gt",
    "pck_records",
    "pck_by_flag",
    "pck_table",
    "bootstrap_ci",
]

#: PCK thresholds α reported by the paper.
ALPHAS = (0.05, 0.10, 0.15)
#: Ways of averaging correctness, paper's first.
AVERAGINGS = ("per_image", "per_point")
#: Coordinate spaces, paper's first.
SPACES = ("resized", "original")
#: Margin of the ground-truth clamp in the resized space.
GT_CLAMP_EPS = 1e-4

_BASE_COLUMNS = ("pair_id", "category", "matcher")
_SPACE_COLUMNS = {
    "resized": ("pred_x", "pred_y", "gt_x", "gt_y", "thr"),
    "original": ("pred_x_orig", "pred_y_orig", "gt_x_orig", "gt_y_orig", "thr_orig"),
}


def pck_correct(pred: np.ndarray, gt: np.ndarray, thr: np.ndarray | float, alpha: float) -> np.ndarray:
    """Which predictions lie within ``alpha · thr`` of the ground truth (boundary included).

    Args:
        pred: ``(N, 2)`` predicted points.
        gt: ``(N, 2)`` ground-truth points.
        thr: ``(N,)`` per-keypoint thresholds, or one threshold for all.
        alpha: PCK α.

    Returns:
        ``(N,)`` bool, ``‖pred − gt‖₂ ≤ alpha · thr``; a NaN prediction counts as wrong.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != 2 or gt.shape != pred.shape:
        raise ValueError(f"pred and gt must both have shape (N, 2), got {pred.shape} and {gt.shape}")
    thr = np.asarray(thr, dtype=np.float64)
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != pred.shape[0]):
        raise ValueError(f"thr must be a scalar or have shape ({pred.shape[0]},), got {thr.shape}")
    dist = np.hypot(pred[:, 0] - gt[:, 0], pred[:, 1] - gt[:, 1])
    return dist <= alpha * thr


def clamp_gt(gt: np.ndarray, img_size: int) -> np.ndarray:
    """Clamp ``(N, 2)`` resized ground-truth points into ``[1e-4, img_size − 1 − 1e-4]`` (the paper's protocol)."""
    return np.clip(np.asarray(gt, dtype=np.float64), GT_CLAMP_EPS, img_size - 1 - GT_CLAMP_EPS)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _check_columns(df: pd.DataFrame, spaces: Iterable[str], extra: Sequence[str] = ()) -> None:
    for space in spaces:
        if space not in _SPACE_COLUMNS:
            raise ValueError(f"unknown space {space!r}; valid ones are: {', '.join(SPACES)}")
    needed = list(_BASE_COLUMNS) + list(extra)
    for space in spaces:
        needed += _SPACE_COLUMNS[space]
    missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
    if missing:
        raise ValueError(f"predictions table lacks the columns: {', '.join(missing)}")


def _check_averaging(averaging: str) -> None:
    if averaging not in AVERAGINGS:
        raise ValueError(f"unknown averaging {averaging!r}; valid ones are: {', '.join(AVERAGINGS)}")


def _correct(df: pd.DataFrame, alpha: float, space: str, img_size: int) -> np.ndarray:
    """``(len(df),)`` bool correctness of every row in ``space``."""
    px, py, gx, gy, thr = _SPACE_COLUMNS[space]
    thresholds = df[thr].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(thresholds) & (thresholds > 0))
    if bad.any():  # a threshold of 0 or below would silently count every keypoint of the pair as wrong
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"PCK threshold {thr} = {thresholds[i]:g} of pair {df['pair_id'].iloc[i]!r} "
                         f"({int(bad.sum())} row(s) in all) is not a positive number: degenerate ground truth")
    gt = df[[gx, gy]].to_numpy(dtype=np.float64)
    if space == "resized":
        gt = clamp_gt(gt, img_size)
    return pck_correct(df[[px, py]].to_numpy(dtype=np.float64), gt, thresholds, alpha)


def _pair_codes(df: pd.DataFrame) -> np.ndarray:
    """``(len(df),)`` integer id of each row's pair, ``(category, pair_id)``, numbered in order of appearance."""
    keys = df["category"].astype(str) + "\x00" + df["pair_id"].astype(str)
    return pd.factorize(keys)[0]


def _pair_sums(correct: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair number of correct keypoints and of keypoints, each ``(P,)``."""
    n_pairs = int(codes.max()) + 1 if codes.size else 0
    hits = np.bincount(codes, weights=correct.astype(np.float64), minlength=n_pairs)
    counts = np.bincount(codes, minlength=n_pairs).astype(np.float64)
    return hits, counts


def _group_order(values: pd.Series) -> list:
    return sorted(values.unique(), key=lambda v: str(v))


def _records(
    df: pd.DataFrame,
    group_col: str | None,
    group_key: str,
    alphas: Sequence[float],
    spaces: Sequence[str],
    img_size: int,
) -> list[dict]:
    """Records for every matcher × space × alpha × group (``"all"`` first, then each value) × averaging."""
    records: list[dict] = []
    for matcher in _group_order(df["matcher"]):
        sub = df[df["matcher"] == matcher]
        codes = _pair_codes(sub)
        groups: list[tuple[object, np.ndarray]] = [("all", np.ones(len(sub), dtype=bool))]
        if group_col is not None:
            col = sub[group_col].to_numpy()
            groups += [(v, col == v) for v in _group_order(sub[group_col])]
        for space in spaces:
            for alpha in alphas:
                correct = _correct(sub, alpha, space, img_size)
                for value, rows in groups:
                    hits, counts = _pair_sums(correct[rows], codes[rows])
                    present = counts > 0
                    per_pair = hits[present] / counts[present]
                    base = {"matcher": matcher, "alpha": float(alpha), "space": space, group_key: value}
                    per_image = {"averaging": "per_image", "pck": 100.0 * float(per_pair.mean())}
                    per_point = {"averaging": "per_point", "pck": 100.0 * float(correct[rows].mean())}
                    records.append({**base, **per_image, "n": int(present.sum())})
                    records.append({**base, **per_point, "n": int(rows.sum())})
    return records


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------


def pck_records(
    df: pd.DataFrame,
    alphas: Sequence[float] = ALPHAS,
    spaces: Sequence[str] = ("resized", "original"),
    img_size: int = 768,
    by_category: bool = True,
) -> list[dict]:
    """PCK of every matcher in a predictions table, as a list of flat records.

    Args:
        df: predictions table (see the module doc); the ``_orig`` columns are needed only for
            ``"original"`` in ``spaces``.
        alphas: PCK thresholds α.
        spaces: ``"resized"`` (gt clamped with :func:`clamp_gt`, the paper's) and/or ``"original"`` (unclamped).
        img_size: side of the resized images (for the clamp).
        by_category: add one record per category besides ``"all"``.

    Returns:
        Records ``{"matcher", "alpha", "space", "category", "averaging", "pck", "n"}``: ``pck`` in percent
        (0–100); ``n`` the number of pairs (``per_image``) or keypoints (``per_point``) averaged. Empty for an
        empty table.

    Raises:
        ValueError: a needed column is missing, a space is unknown, or a threshold is not positive (degenerate
            ground truth, which would otherwise count as 0 %).
    """
    spaces = tuple(spaces)
    _check_columns(df, spaces)
    if len(df) == 0:
        return []
    return _records(df, "category" if by_category else None, "category", tuple(alphas), spaces, img_size)


def pck_by_flag(
    df: pd.DataFrame,
    flag_column: str,
    alphas: Sequence[float] = ALPHAS,
    spaces: Sequence[str] = ("resized",),
    img_size: int = 768,
) -> list[dict]:
    """PCK split by the value of a per-pair column, e.g. SPair-71k's ``viewpoint_variation`` difficulty flag.

    Same as :func:`pck_records` with ``category`` replaced by the key ``flag_column`` holding ``"all"`` or one
    value of that column (plus ``"flag": flag_column``).
    """
    spaces = tuple(spaces)
    _check_columns(df, spaces, extra=(flag_column,))
    if len(df) == 0:
        return []
    records = _records(df, flag_column, flag_column, tuple(alphas), spaces, img_size)
    for r in records:
        r["flag"] = flag_column
    return records


def pck_table(
    records: list[dict], matcher: str | None = None, space: str | None = None, group: str = "category"
) -> pd.DataFrame:
    """Pivot records into a table: rows ``category`` (``"all"`` first), columns ``(alpha, averaging)``.

    Args:
        records: output of :func:`pck_records` (or :func:`pck_by_flag` with ``group`` the flag column).
        matcher, space: keep only these; when left ``None`` and several are present, they become extra
            (outer) row levels.
        group: the record key to use as the innermost row level.

    Returns:
        ``DataFrame`` of PCK percentages.
    """
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    if matcher is not None:
        frame = frame[frame["matcher"] == matcher]
    if space is not None:
        frame = frame[frame["space"] == space]
    index = [k for k in ("matcher", "space") if frame[k].nunique() > 1] + [group]
    table = frame.pivot_table(index=index, columns=["alpha", "averaging"], values="pck", aggfunc="first")
    order = sorted(table.index, key=lambda k: _row_key(k))
    return table.loc[order]


def _row_key(key) -> tuple:
    """Sort rows by outer levels, with ``"all"`` first in the innermost level."""
    key = key if isinstance(key, tuple) else (key,)
    *outer, inner = key
    return (*[str(k) for k in outer], inner != "all", str(inner))


def bootstrap_ci(
    df: pd.DataFrame,
    alpha: float = 0.1,
    averaging: str = "per_image",
    space: str = "resized",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    img_size: int = 768,
    matcher: str | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of PCK (percent), resampling pairs with replacement.

    :func:`scipy.stats.bootstrap` over the pairs, whose keypoints stay together: each replicate draws as many pairs
    as the table holds, with replacement; ``per_image`` averages the drawn pairs' PCK, ``per_point`` pools the drawn
    pairs' keypoints (``Σ correct / Σ keypoints``, with ``paired=True`` so one draw picks a pair's two sums). The percentile method, not BCa: a category whose pairs are all right (or all
    wrong) gives a degenerate bootstrap distribution, where BCa has no interval, and BCa's jackknife costs
    ``O(pairs²)``. A table of one pair gives the zero-width interval at its PCK. Deterministic for a given ``seed``.

    Args:
        df: predictions table of one matcher (or pass ``matcher`` to select one).
        alpha, averaging, space, img_size: as in :func:`pck_records`.
        n_boot: number of bootstrap replicates.
        level: coverage of the interval, in ``(0, 1)``.
        seed: seed of the ``numpy.random.default_rng`` that draws the resamples.
        matcher: the matcher to keep when ``df`` holds several.

    Returns:
        ``(low, high)`` in percent.
    """
    _check_averaging(averaging)
    _check_columns(df, (space,))
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    if matcher is not None:
        df = df[df["matcher"] == matcher]
    elif df["matcher"].nunique() > 1:
        raise ValueError(f"df holds several matchers ({', '.join(map(str, df['matcher'].unique()))}); pass matcher=")
    if len(df) == 0:
        raise ValueError("no predictions to bootstrap")

    hits, counts = _pair_sums(_correct(df, alpha, space, img_size), _pair_codes(df))
    if averaging == "per_image":
        data = (hits / counts,)

        def statistic(per_pair, axis=-1):
            return 100.0 * per_pair.mean(axis=axis)
    else:
        data = (hits, counts)

        def statistic(h, c, axis=-1):
            return 100.0 * h.sum(axis=axis) / c.sum(axis=axis)

    n_pairs = hits.shape[0]
    if n_pairs == 1:  # every resample is that one pair (and scipy wants two observations)
        pck = float(statistic(*data))
        return pck, pck
    res = stats.bootstrap(data, statistic, n_resamples=n_boot, batch=max(1, 2_000_000 // n_pairs), vectorized=True,
                          paired=True, axis=-1, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed))  # batches bound the (batch, n_pairs) resamples to ~16 MB
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
