"""PCK — percentage of correct keypoints — in the protocol variants of SPEC §7.

Input is a *predictions table*, one row per keypoint, columns ``pair_id, category, kp_index, src_x, src_y, gt_x,
gt_y, thr, pred_x, pred_y, matcher`` (resized ``img_size`` image, the paper's space) and, for ``space="original"``,
``gt_x_orig, gt_y_orig, pred_x_orig, pred_y_orig, thr_orig``. A keypoint is correct when ``‖pred − gt‖₂ ≤ α · thr``;
in the resized space the ground truth is first clamped as the paper does (:func:`clamp_gt`). ``per_image`` (the
paper's) averages over each pair's keypoints then over pairs, ``per_point`` over all keypoints. Pairs are
``(category, pair_id)`` within each matcher.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["ALPHAS", "AVERAGINGS", "SPACES", "GT_CLAMP_EPS", "pck_correct", "clamp_gt", "correct_rows", "pck_records",
           "pck_by_flag", "pck_table", "bootstrap_ci"]

#: PCK thresholds α reported by the paper.
ALPHAS = (0.05, 0.10, 0.15)
#: Ways of averaging correctness, paper's first.
AVERAGINGS = ("per_image", "per_point")
#: Coordinate spaces, paper's first.
SPACES = ("resized", "original")
#: Margin of the ground-truth clamp in the resized space.
GT_CLAMP_EPS = 1e-4

_SPACE_COLUMNS = {
    "resized": ("pred_x", "pred_y", "gt_x", "gt_y", "thr"),
    "original": ("pred_x_orig", "pred_y_orig", "gt_x_orig", "gt_y_orig", "thr_orig"),
}


def pck_correct(pred: np.ndarray, gt: np.ndarray, thr: np.ndarray | float, alpha: float) -> np.ndarray:
    """``‖pred − gt‖₂ ≤ alpha · thr`` for each point (boundary included); a NaN prediction counts as wrong.

    Shape:
        - pred, gt: :math:`(N, 2)`
        - thr: :math:`(N)` or a scalar
        - Output: :math:`(N)`, bool
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != 2 or gt.shape != pred.shape:
        raise ValueError(f"pred and gt must both have shape (N, 2), got {pred.shape} and {gt.shape}")
    thr = np.asarray(thr, dtype=np.float64)
    if thr.ndim > 1 or (thr.ndim == 1 and thr.shape[0] != pred.shape[0]):
        raise ValueError(f"thr must be a scalar or have shape ({pred.shape[0]},), got {thr.shape}")
    return np.hypot(pred[:, 0] - gt[:, 0], pred[:, 1] - gt[:, 1]) <= alpha * thr


def clamp_gt(gt: np.ndarray, img_size: int) -> np.ndarray:
    """Clamp ``(N, 2)`` resized ground-truth points into ``[1e-4, img_size − 1 − 1e-4]`` (the paper's protocol)."""
    return np.clip(np.asarray(gt, dtype=np.float64), GT_CLAMP_EPS, img_size - 1 - GT_CLAMP_EPS)


def _check_columns(df: pd.DataFrame, spaces: Sequence[str], extra: Sequence[str] = ()) -> None:
    for space in spaces:
        if space not in _SPACE_COLUMNS:
            raise ValueError(f"unknown space {space!r}; valid ones are: {', '.join(SPACES)}")
    needed = dict.fromkeys(["pair_id", "category", "matcher", *extra, *(c for s in spaces for c in _SPACE_COLUMNS[s])])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"predictions table lacks the columns: {', '.join(missing)}")


def correct_rows(df: pd.DataFrame, alpha: float, space: str = "resized", img_size: int = 768,
                 pred: tuple[str, str] | None = None) -> np.ndarray:
    """Correctness of every row of a predictions table in ``space`` (the resized ground truth clamped as the
    paper does); ``pred``: other prediction columns than the space's (e.g. of two runs merged side by side).

    Shape:
        - Output: :math:`(len(df))`, bool

    Raises:
        ValueError: a threshold that is not positive (degenerate ground truth, else silently wrong).
    """
    px, py, gx, gy, thr = _SPACE_COLUMNS[space]
    px, py = pred or (px, py)
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
    return pd.factorize(df["category"].astype(str) + "\x00" + df["pair_id"].astype(str))[0]


def _pair_sums(correct: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair number of correct keypoints and of keypoints, each ``(P,)``."""
    n_pairs = int(codes.max()) + 1 if codes.size else 0
    hits = np.bincount(codes, weights=correct.astype(np.float64), minlength=n_pairs)
    return hits, np.bincount(codes, minlength=n_pairs).astype(np.float64)


def _records(df: pd.DataFrame, group_col: str | None, group_key: str, alphas: Sequence[float],
             spaces: Sequence[str], img_size: int) -> list[dict]:
    """Records for every matcher × space × alpha × group (``"all"`` first, then each value) × averaging."""
    spaces = tuple(spaces)
    _check_columns(df, spaces, () if group_col is None else (group_col,))
    records: list[dict] = []
    for matcher in sorted(df["matcher"].unique(), key=str):
        sub = df[df["matcher"] == matcher]
        codes = _pair_codes(sub)
        groups: list[tuple[object, np.ndarray]] = [("all", np.ones(len(sub), dtype=bool))]
        if group_col is not None:
            col = sub[group_col].to_numpy()
            groups += [(v, col == v) for v in sorted(sub[group_col].unique(), key=str)]
        for space in spaces:
            for alpha in alphas:
                correct = correct_rows(sub, alpha, space, img_size)
                for value, rows in groups:
                    hits, counts = _pair_sums(correct[rows], codes[rows])
                    present = counts > 0
                    per_pair = hits[present] / counts[present]
                    base = {"matcher": matcher, "alpha": float(alpha), "space": space, group_key: value}
                    records.append({**base, "averaging": "per_image", "pck": 100.0 * float(per_pair.mean()),
                                    "n": int(present.sum())})
                    records.append({**base, "averaging": "per_point", "pck": 100.0 * float(correct[rows].mean()),
                                    "n": int(rows.sum())})
    return records


def pck_records(df: pd.DataFrame, alphas: Sequence[float] = ALPHAS, spaces: Sequence[str] = ("resized", "original"),
                img_size: int = 768, by_category: bool = True) -> list[dict]:
    """PCK of every matcher in a predictions table, as a list of flat records.

    Args:
        spaces: ``"resized"`` (gt clamped, the paper's) and/or ``"original"`` (needs the ``_orig`` columns).
        img_size: side of the resized images (for the clamp).
        by_category: add one record per category besides ``"all"``.

    Returns:
        Records ``{"matcher", "alpha", "space", "category", "averaging", "pck", "n"}``: ``pck`` in percent;
        ``n`` the number of pairs (``per_image``) or keypoints (``per_point``) averaged. Empty for an empty table.

    Raises:
        ValueError: also for a threshold that is not positive (degenerate ground truth, else silently 0 %).
    """
    return _records(df, "category" if by_category else None, "category", tuple(alphas), spaces, img_size)


def pck_by_flag(df: pd.DataFrame, flag_column: str, alphas: Sequence[float] = ALPHAS,
                spaces: Sequence[str] = ("resized",), img_size: int = 768) -> list[dict]:
    """PCK split by the value of a per-pair column, e.g. SPair-71k's ``viewpoint_variation`` difficulty flag.

    Same as :func:`pck_records` with ``category`` replaced by the key ``flag_column`` holding ``"all"`` or one
    value of that column (plus ``"flag": flag_column``).
    """
    return [{**r, "flag": flag_column} for r in _records(df, flag_column, flag_column, tuple(alphas), spaces, img_size)]


def pck_table(records: list[dict], matcher: str | None = None, space: str | None = None,
              group: str = "category") -> pd.DataFrame:
    """Pivot records into a ``DataFrame`` of PCK: rows ``group`` (``"all"`` first), columns ``(alpha, averaging)``.

    ``matcher`` / ``space`` keep only those; left ``None``, several matchers or spaces become outer row levels.
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

    def row_key(key) -> tuple:  # outer levels, then "all" first in the innermost one
        *outer, inner = key if isinstance(key, tuple) else (key,)
        return (*[str(k) for k in outer], inner != "all", str(inner))

    return table.loc[sorted(table.index, key=row_key)]


def bootstrap_ci(df: pd.DataFrame, alpha: float = 0.1, averaging: str = "per_image", space: str = "resized",
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0, img_size: int = 768,
                 matcher: str | None = None) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` of PCK (percent), resampling pairs (with their keypoints) with replacement.

    ``per_point`` pools the drawn pairs' keypoints. Percentile, not BCa: BCa has no interval when all pairs are
    right (or wrong) and its jackknife costs ``O(pairs²)``. One pair gives the zero-width interval at its PCK.
    ``seed`` seeds ``numpy.random.default_rng``; ``matcher`` selects one when ``df`` holds several.
    """
    if averaging not in AVERAGINGS:
        raise ValueError(f"unknown averaging {averaging!r}; valid ones are: {', '.join(AVERAGINGS)}")
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

    hits, counts = _pair_sums(correct_rows(df, alpha, space, img_size), _pair_codes(df))
    if averaging == "per_image":
        data = (hits / counts,)

        def statistic(per_pair, axis=-1):
            return 100.0 * per_pair.mean(axis=axis)
    else:  # paired, so that one draw picks a pair's two sums
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
