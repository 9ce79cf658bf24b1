"""Tests of sd4match_utils.metrics on hand-computed tables and against an independent pandas computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sd4match_utils.metrics import (
    ALPHAS,
    bootstrap_ci,
    clamp_gt,
    correct_rows,
    pck_by_flag,
    pck_correct,
    pck_records,
    pck_table,
)


def _rows(pair_id, category, errors, thr=100.0, matcher="nn", gt=(300.0, 300.0), **extra):
    """Rows of one pair: keypoint k predicted at gt + (errors[k], 0); original space = resized space × 2."""
    out = []
    for k, e in enumerate(errors):
        gx, gy = gt
        out.append(
            dict(
                pair_id=pair_id, category=category, kp_index=k, src_x=10.0, src_y=10.0,
                gt_x=gx, gt_y=gy, thr=thr, pred_x=gx + e, pred_y=gy, matcher=matcher,
                gt_x_orig=2 * gx, gt_y_orig=2 * gy, pred_x_orig=2 * (gx + e), pred_y_orig=2 * gy,
                thr_orig=2 * thr, **extra,
            )
        )  # fmt: skip
    return out


def _find(records, **key):
    hits = [r for r in records if all(r[k] == v for k, v in key.items())]
    assert len(hits) == 1, (key, hits)
    return hits[0]


# ------------------------------------------------------------------------------------------------------------
# pck_correct / clamp_gt
# ------------------------------------------------------------------------------------------------------------


def test_pck_correct_hand_examples():
    gt = np.zeros((4, 2))
    pred = np.array([[3.0, 4.0], [3.0, 4.0], [0.0, 9.0], [np.nan, 0.0]])  # distances 5, 5, 9, nan
    thr = np.array([50.0, 49.0, 100.0, 100.0])
    # 5 ≤ 0.1·50 exactly at the boundary -> correct; 5 > 4.9 -> wrong; 9 ≤ 10; NaN -> wrong
    np.testing.assert_array_equal(pck_correct(pred, gt, thr, 0.1), [True, False, True, False])
    np.testing.assert_array_equal(pck_correct(pred, gt, 100.0, 0.05), [True, True, False, False])


def test_pck_correct_validates_shapes():
    with pytest.raises(ValueError):
        pck_correct(np.zeros((3, 2)), np.zeros((2, 2)), 1.0, 0.1)
    with pytest.raises(ValueError):
        pck_correct(np.zeros((3, 2)), np.zeros((3, 2)), np.ones(2), 0.1)


def test_clamp_gt():
    gt = np.array([[-5.0, 0.0], [767.0, 800.0], [12.5, 766.0]])
    out = clamp_gt(gt, 768)
    np.testing.assert_allclose(out, [[1e-4, 1e-4], [767 - 1e-4, 767 - 1e-4], [12.5, 766.0]], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# pck_records
# ------------------------------------------------------------------------------------------------------------


def test_per_image_and_per_point_differ():
    # pair a: 1 keypoint, correct; pair b: 3 keypoints, none correct (α = 0.1, thr = 100 -> 10 px)
    df = pd.DataFrame(_rows("a", "cat", [1.0]) + _rows("b", "cat", [20.0, 30.0, 40.0]))
    rec = pck_records(df, alphas=(0.1,), spaces=("resized",))
    img = _find(rec, averaging="per_image", category="all")
    pt = _find(rec, averaging="per_point", category="all")
    assert img["pck"] == pytest.approx(50.0) and img["n"] == 2
    assert pt["pck"] == pytest.approx(25.0) and pt["n"] == 4
    assert img["matcher"] == "nn" and img["space"] == "resized" and img["alpha"] == 0.1


def test_per_category_and_alphas():
    df = pd.DataFrame(
        _rows("p1", "cat", [0.0, 12.0])  # α=0.05 (5 px): 1/2; α=0.1: 1/2; α=0.15: 2/2
        + _rows("p2", "cat", [4.0])  # all α: 1/1
        + _rows("p3", "dog", [6.0, 6.0, 20.0])  # α=0.05: 0/3; α=0.1: 2/3; α=0.15: 2/3
    )
    rec = pck_records(df, spaces=("resized",))
    expected = {  # (category, alpha, averaging) -> (pck, n)
        ("cat", 0.05, "per_image"): (75.0, 2), ("cat", 0.05, "per_point"): (200 / 3, 3),
        ("cat", 0.10, "per_image"): (75.0, 2), ("cat", 0.15, "per_image"): (100.0, 2),
        ("dog", 0.05, "per_image"): (0.0, 1), ("dog", 0.10, "per_point"): (200 / 3, 3),
        ("all", 0.05, "per_image"): ((50 + 100 + 0) / 3, 3), ("all", 0.05, "per_point"): (200 / 6, 6),
        ("all", 0.10, "per_image"): ((50 + 100 + 200 / 3) / 3, 3), ("all", 0.10, "per_point"): (400 / 6, 6),
        ("all", 0.15, "per_image"): ((100 + 100 + 200 / 3) / 3, 3), ("all", 0.15, "per_point"): (500 / 6, 6),
    }  # fmt: skip
    for (cat, alpha, avg), (pck, n) in expected.items():
        r = _find(rec, category=cat, alpha=alpha, averaging=avg)
        assert r["pck"] == pytest.approx(pck), (cat, alpha, avg)
        assert r["n"] == n
    # 3 alphas × (all + 2 categories) × 2 averagings
    assert len(rec) == 3 * 3 * 2
    assert {r["category"] for r in pck_records(df, by_category=False, spaces=("resized",))} == {"all"}


def test_resized_gt_is_clamped_but_original_is_not():
    # gt outside the resized image: clamped to 767 − 1e-4, where the prediction is (within 1 px); the _orig columns
    # keep the raw gt (error 3.1 px · 2 > 0.1 · 10 · 2)
    df = pd.DataFrame(_rows("a", "cat", [766.9 - 770.0], thr=10.0, gt=(770.0, 300.0)))
    rec = pck_records(df, alphas=(0.1,), img_size=768)
    assert _find(rec, space="resized", averaging="per_point", category="all")["pck"] == 100.0
    assert _find(rec, space="original", averaging="per_point", category="all")["pck"] == 0.0
    # a larger img_size makes the clamp inactive
    rec = pck_records(df, alphas=(0.1,), spaces=("resized",), img_size=1024)
    assert _find(rec, averaging="per_point", category="all")["pck"] == 0.0


def test_correct_rows_clamps_the_resized_ground_truth_and_takes_other_prediction_columns():
    # gt at x = 770 lies outside a 768 image: clamped to 767 - 1e-4 in the resized space only
    errors = (-3.0, 0.0, 8.0)
    df = pd.DataFrame(_rows("p", "cat", errors, thr=100.0, gt=(770.0, 300.0)))
    df["pred_x_b"], df["pred_y_b"] = df["gt_x"] - 12.0, df["gt_y"]
    clamped = 767 - 1e-4
    by_hand = [abs(770.0 + e - clamped) <= 10.0 for e in errors]
    assert correct_rows(df, 0.1, img_size=768).tolist() == by_hand == [True, True, False]
    assert correct_rows(df, 0.1, "original", img_size=768).tolist() == [True, True, True]  # unclamped, thr 200
    # B's predictions lie 12 px from the raw gt but 9 px from the clamped one
    assert correct_rows(df, 0.1, img_size=768, pred=("pred_x_b", "pred_y_b")).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="not a positive number"):
        correct_rows(df.assign(thr=0.0), 0.1)


def test_original_space_uses_its_own_columns():
    df = pd.DataFrame(_rows("a", "cat", [8.0, 8.0]))
    df["thr_orig"] = 50.0  # original: error 16 px > 0.1 · 50; resized: error 8 px ≤ 0.1 · 100
    rec = pck_records(df, alphas=(0.1,))
    assert _find(rec, space="resized", averaging="per_image", category="all")["pck"] == 100.0
    assert _find(rec, space="original", averaging="per_image", category="all")["pck"] == 0.0


def test_every_matcher_gets_records():
    df = pd.DataFrame(_rows("a", "cat", [1.0, 50.0], matcher="nn") + _rows("a", "cat", [1.0, 2.0], matcher="soft"))
    rec = pck_records(df, alphas=(0.1,), spaces=("resized",))
    assert _find(rec, matcher="nn", averaging="per_image", category="all")["pck"] == 50.0
    assert _find(rec, matcher="soft", averaging="per_image", category="all")["pck"] == 100.0
    assert _find(rec, matcher="soft", averaging="per_image", category="all")["n"] == 1


def test_records_agree_with_independent_groupby():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        cat = ["cat", "dog", "bus"][p % 3]
        rows += _rows(f"{p}", cat, rng.uniform(0, 25, size=rng.integers(1, 12)), thr=rng.uniform(50, 150))
    df = pd.DataFrame(rows)
    rec = pck_records(df, spaces=("resized",))
    for alpha in ALPHAS:
        ok = np.hypot(df.pred_x - df.gt_x, df.pred_y - df.gt_y) <= alpha * df.thr
        per_pair = ok.groupby([df.category, df.pair_id]).mean()
        for cat in ["cat", "dog", "bus"]:
            r = _find(rec, category=cat, alpha=alpha, averaging="per_image")
            assert r["pck"] == pytest.approx(100 * per_pair.loc[cat].mean())
            r = _find(rec, category=cat, alpha=alpha, averaging="per_point")
            assert r["pck"] == pytest.approx(100 * ok[df.category == cat].mean())
        assert _find(rec, category="all", alpha=alpha, averaging="per_image")["pck"] == pytest.approx(
            100 * per_pair.mean()
        )


def test_missing_columns_and_bad_space():
    df = pd.DataFrame(_rows("a", "cat", [1.0])).drop(columns=["thr_orig"])
    pck_records(df, spaces=("resized",))  # fine without the _orig columns
    with pytest.raises(ValueError, match="thr_orig"):
        pck_records(df)
    with pytest.raises(ValueError, match="resized, original"):
        pck_records(df, spaces=("pixels",))
    assert pck_records(df.iloc[:0], spaces=("resized",)) == []


def test_pck_by_flag():
    df = pd.DataFrame(
        _rows("a", "cat", [1.0, 1.0], viewpoint_variation=0)
        + _rows("b", "cat", [1.0, 50.0], viewpoint_variation=2)
        + _rows("c", "dog", [50.0], viewpoint_variation=2)
    )
    rec = pck_by_flag(df, "viewpoint_variation", alphas=(0.1,))
    assert _find(rec, viewpoint_variation=0, averaging="per_image")["pck"] == 100.0
    r = _find(rec, viewpoint_variation=2, averaging="per_image")
    assert r["pck"] == pytest.approx(25.0) and r["n"] == 2 and r["flag"] == "viewpoint_variation"
    assert _find(rec, viewpoint_variation=2, averaging="per_point")["pck"] == pytest.approx(100 / 3)
    assert _find(rec, viewpoint_variation="all", averaging="per_image")["pck"] == pytest.approx(50.0)


def test_pck_table():
    df = pd.DataFrame(_rows("a", "cat", [1.0]) + _rows("b", "dog", [20.0, 30.0, 1.0]))
    table = pck_table(pck_records(df, spaces=("resized",)))
    assert list(table.index) == ["all", "cat", "dog"]
    assert table.loc["dog", (0.1, "per_point")] == pytest.approx(100 / 3)
    assert table.loc["all", (0.1, "per_image")] == pytest.approx((100 + 100 / 3) / 2)
    assert table.shape == (3, 6)
    # several matchers / spaces become outer row levels unless selected
    df2 = pd.concat([df, df.assign(matcher="soft")])
    both = pck_table(pck_records(df2))
    assert both.index.names == ["matcher", "space", "category"]
    assert pck_table(pck_records(df2), matcher="soft", space="original").shape == (3, 6)


# ------------------------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------------------------


def _random_table(n_pairs, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pairs):
        rows += _rows(f"p{p}", "cat", rng.uniform(0, 20, size=rng.integers(1, 15)))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("averaging", ["per_image", "per_point"])
def test_bootstrap_contains_estimate_and_is_deterministic(averaging):
    df = _random_table(60)
    est = _find(pck_records(df, alphas=(0.1,), spaces=("resized",)), averaging=averaging, category="all")["pck"]
    lo, hi = bootstrap_ci(df, alpha=0.1, averaging=averaging, n_boot=500, seed=3)
    assert lo < est < hi
    assert (lo, hi) == bootstrap_ci(df, alpha=0.1, averaging=averaging, n_boot=500, seed=3)
    assert (lo, hi) != bootstrap_ci(df, alpha=0.1, averaging=averaging, n_boot=500, seed=4)
    # a wider level gives a wider interval
    lo99, hi99 = bootstrap_ci(df, alpha=0.1, averaging=averaging, n_boot=500, seed=3, level=0.99)
    assert lo99 <= lo and hi99 >= hi


@pytest.mark.parametrize("averaging", ["per_image", "per_point"])
def test_bootstrap_narrows_with_more_pairs(averaging):
    small = _random_table(30, seed=1)
    large = pd.concat([small.assign(pair_id=small.pair_id + f"_{r}") for r in range(16)])
    lo_s, hi_s = bootstrap_ci(small, averaging=averaging, seed=0)
    lo_l, hi_l = bootstrap_ci(large, averaging=averaging, seed=0)
    # same point estimate, 16× the pairs -> about 4× narrower
    assert (hi_l - lo_l) < 0.4 * (hi_s - lo_s)


@pytest.mark.parametrize("averaging", ["per_image", "per_point"])
def test_bootstrap_agrees_with_a_brute_force_percentile_bootstrap(averaging):
    # 7 pairs of 1-6 keypoints; the reference draws its own resamples of pair indices with plain numpy
    df = _random_table(7, seed=5)
    ok = (np.abs(df.pred_x - df.gt_x) <= 0.1 * df.thr).to_numpy()
    pairs = [ok[(df.pair_id == p).to_numpy()] for p in dict.fromkeys(df.pair_id)]
    hits = np.array([p.sum() for p in pairs], dtype=float)
    sizes = np.array([p.size for p in pairs], dtype=float)
    idx = np.random.default_rng(12345).integers(0, len(pairs), size=(40_000, len(pairs)))
    if averaging == "per_image":
        boot = 100 * (hits / sizes)[idx].mean(axis=1)
    else:
        boot = 100 * hits[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    for level in (0.8, 0.95):
        expected = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
        got = bootstrap_ci(df, alpha=0.1, averaging=averaging, n_boot=40_000, level=level, seed=1)
        # both are Monte-Carlo estimates of the same percentiles: within a few tenths of a percentage point
        assert got == pytest.approx(tuple(expected), abs=1.0), (level, got, expected)
        assert expected[0] < expected[1]


def test_bootstrap_resamples_pairs_not_points():
    # every pair has PCK 50 % per image, so any resample of pairs gives 50 %; per point the pair sizes vary
    df = pd.DataFrame(
        _rows("a", "cat", [1.0, 50.0])
        + _rows("b", "cat", [1.0, 1.0, 50.0, 50.0])
        + _rows("c", "cat", [1.0, 1.0, 1.0, 50.0, 50.0, 50.0])
    )
    assert bootstrap_ci(df, averaging="per_image", n_boot=200) == (50.0, 50.0)
    assert bootstrap_ci(df, averaging="per_point", n_boot=200) == (50.0, 50.0)
    df = pd.DataFrame(_rows("a", "cat", [1.0]) + _rows("b", "cat", [50.0, 50.0, 50.0]))
    lo, hi = bootstrap_ci(df, averaging="per_point", n_boot=2000, level=0.9)
    # resampling the 2 pairs can only give 0 % (b, b), 25 % (a, b) or 100 % (a, a) per point
    assert lo == 0.0 and hi == 100.0
    lo, hi = bootstrap_ci(df, averaging="per_point", n_boot=2000, level=0.4)
    assert lo == hi == 25.0


def test_bootstrap_validation():
    df = pd.DataFrame(_rows("a", "cat", [1.0], matcher="nn") + _rows("a", "cat", [1.0], matcher="soft"))
    with pytest.raises(ValueError, match="matcher"):
        bootstrap_ci(df)
    assert bootstrap_ci(df, matcher="soft", n_boot=10) == (100.0, 100.0)
    one = pd.DataFrame(_rows("a", "cat", [1.0, 50.0, 50.0, 50.0]))  # one pair: every resample is that pair
    assert bootstrap_ci(one, averaging="per_image") == bootstrap_ci(one, averaging="per_point") == (25.0, 25.0)
    with pytest.raises(ValueError, match="averaging"):
        bootstrap_ci(df, matcher="nn", averaging="mean")
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(df, matcher="nn", level=1.0)


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan")])
def test_non_positive_threshold_is_an_error_not_zero_percent(bad):
    df = pd.DataFrame(_rows("a", "cat", [1.0]) + _rows("b", "cat", [1.0, 2.0], thr=bad))
    with pytest.raises(ValueError, match="pair 'b'"):
        pck_records(df, img_size=768)
    with pytest.raises(ValueError, match="degenerate"):
        bootstrap_ci(df, img_size=768)
