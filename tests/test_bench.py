"""The speed harness ``benchmarks/bench.py``, loaded the way ``sd4match bench`` loads it, on the tiny model (CPU):
every strategy is timed, early exit equals the full pass, and the FLOP floor is what the strategies compute."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sd4match_utils import cli
from sd4match_utils.conditioning import encode_text


@pytest.fixture(scope="module")
def bench():
    return cli.load_bench()


def test_flop_floor_is_what_the_early_exit_strategies_compute(bench, tiny_sd):
    """FlopCounterMode around the harness's own extraction closures on the real tiny model: the floor (counted
    from the configs on the meta device) is exactly what ``ours`` / ``ours-cached`` compute, and less than the
    whole-UNet strategies. Attention runs on the math backend: the counter has no formula for the CPU's fused
    kernel and would miss those matmuls."""
    cond = encode_text(tiny_sd, [""])
    for size in (64, 96):
        image, z = torch.zeros(1, 3, size, size), torch.zeros(1, 4, size // 8, size // 8)
        for strategy in bench.STRATEGIES:
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                bench.extraction_fn(tiny_sd, strategy, size, 2, cond, image, z)()
            floor = bench.flop_lower_bound(strategy, 2, size, arch="tiny")
            if strategy.startswith("ours"):
                assert counter.get_total_flops() == floor, (strategy, size)
            else:
                assert counter.get_total_flops() > 1.2 * floor, (strategy, size)


def test_sd21_flop_counts():
    """SD 2-1 at 768²: VAE encoder 2.61 TFLOPs, UNet up to ``up_blocks[1]`` 1.13 TFLOPs (benchmarks/RESULTS.md);
    attention grows faster than the pixel count, so 512² costs less than 4/9 of 768²."""
    bench = cli.load_bench()
    c768, c512 = bench.flop_counts(768), bench.flop_counts(512)
    assert c768["vae_encoder"] == pytest.approx(2.61e12, rel=0.01)
    assert c768["unet_to_up1"] == pytest.approx(1.13e12, rel=0.01)
    assert c512["unet_to_up1"] < 0.9 * 4 / 9 * c768["unet_to_up1"]
    assert bench.flop_lower_bound("dift", 8, 768) == 8 * (c768["vae_encoder"] + c768["unet_to_up1"])
    assert bench.flop_lower_bound("ours-cached", 8, 512) == 8 * c512["unet_to_up1"]


def test_harness_runs_and_renders(bench, tiny_sd):
    rows = bench.bench_extraction(tiny_sd, img_sizes=(128,), ensembles=(2,), repeats=1)
    timed = [r for r in rows if not r["strategy"].startswith("check")]
    assert {r["strategy"] for r in timed} == {"dift", "original", "ours", "ours-cached"}
    assert all(r["seconds_per_image"] > 0 for r in timed)
    check = next(r for r in rows if r["strategy"].startswith("check"))
    assert check["equal"] and check["max_abs_diff"] == 0
    step = bench.bench_train_step(tiny_sd, batch=1, img_size=128, repeats=1)
    assert step["seconds_per_step"] > 0
    result = {"environment": {"torch": "x", "diffusers": "y", "python": "3", "date": "d", "processor": "cpu"},
              "matmul_tflops": {"fp32": 1.0}, "extraction": rows, "train_step": [step]}
    md = bench.render_markdown(result, "test")
    assert md.count("\n| fp32 | 128 | 2 |") == 4 and "bit-identical" in md


def test_bench_needs_the_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "sd4match_utils" / "cli.py"))
    assert cli.main(["bench", "--model", "tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs the repository checkout (benchmarks/bench.py)" in err
    assert not (tmp_path / "out").exists()
