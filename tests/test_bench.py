"""The benchmark harness on the tiny model (CPU): every strategy is timed and early exit equals the full pass."""

import pytest

from sd4match_utils.bench import FLOPS_768, bench_extraction, bench_train_step, flop_lower_bound, render_markdown


def test_flop_lower_bound():
    assert flop_lower_bound("ours", 8, 768) == pytest.approx(FLOPS_768["vae_encoder"] + 8 * FLOPS_768["unet_to_up1"])
    assert flop_lower_bound("dift", 2, 768) == pytest.approx(2 * sum(FLOPS_768.values()))
    assert flop_lower_bound("ours-cached", 1, 384) == pytest.approx(FLOPS_768["unet_to_up1"] / 4)


def test_harness_runs_and_renders(tiny_sd):
    rows = bench_extraction(tiny_sd, img_sizes=(128,), ensembles=(2,), repeats=1)
    timed = [r for r in rows if not r["strategy"].startswith("check")]
    assert {r["strategy"] for r in timed} == {"dift", "original", "ours", "ours-cached"}
    assert all(r["seconds_per_image"] > 0 for r in timed)
    check = next(r for r in rows if r["strategy"].startswith("check"))
    assert check["equal"] and check["max_abs_diff"] == 0
    step = bench_train_step(tiny_sd, batch=1, img_size=128, repeats=1)
    assert step["seconds_per_step"] > 0
    result = {"environment": {"torch": "x", "diffusers": "y", "python": "3", "date": "d", "processor": "cpu"},
              "matmul_tflops": {"fp32": 1.0}, "extraction": rows, "train_step": [step]}
    md = render_markdown(result, "test")
    assert md.count("\n| fp32 | 128 | 2 |") == 4 and "bit-identical" in md
