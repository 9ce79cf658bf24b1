"""Speed and memory of feature extraction and of one training step, on SD 2-1's full-size architecture.

A benchmark, not part of the package: ``sd4match bench`` loads this file from the repository checkout.

Extraction strategies, per image, ensemble E:
    dift      VAE encode repeated for every ensemble copy, whole UNet (the DIFT-style way)
    original  VAE once, whole UNet (the original SD4Match way)
    ours      VAE once, UNet stopped after the read-out block (early exit)
    ours-cached  the same with the latent already cached (no VAE at all)
Each runs in a given precision (weights and activations in that dtype). Training: one Adam step of a learned
prompt on a batch of pairs (forward to ``up_blocks[1]``, Gaussian cross-entropy, backward into the prompt).
"""

from __future__ import annotations

import copy
import functools
import gc
import os
import platform
import statistics
import time

import diffusers
import numpy as np
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sd4match_utils import tiny
from sd4match_utils.conditioning import LearnedPrompt, encode_text
from sd4match_utils.features import FeatureExtractor, add_noise, image_key, unet_readout
from sd4match_utils.loss import batch_loss
from sd4match_utils.models import (CPU_BF16_FLAGS, PRECISIONS, SDModel, _cpu_flags, apply_fast_path,
                                   cpu_supports_bf16, freeze, load_sd, resolve_precision)
from sd4match_utils.train import gradient_checkpointing as checkpointing  # exactly what `sd4match train` does

STRATEGIES = ("dift", "original", "ours", "ours-cached")
ARCHITECTURES = {"sd21": (tiny.SD21_UNET_CONFIG, tiny.SD21_VAE_CONFIG),  # UNet and VAE configs, for FLOP counts
                 "tiny": (tiny.TINY_UNET_CONFIG, tiny.TINY_VAE_CONFIG)}


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _peak_gib(device: torch.device, reset: bool = False) -> float | None:
    """Peak memory (GiB) since the last ``reset=True`` call: GPU memory allocated on CUDA, the process's peak RSS
    (``VmHWM``) on the CPU, which writing 5 to ``clear_refs`` resets to the current RSS (Linux)."""
    try:
        if device.type == "cuda":
            if reset:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.max_memory_allocated(device) / 2**30
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return None
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 2**20 for line in f if line.startswith("VmHWM:")), None)
    except OSError:
        return None


def timed(fn, device: torch.device, repeats: int = 3, warmup: int = 1) -> tuple[float, float | None]:
    """Median wall time (s) of ``fn()`` over ``repeats`` runs after ``warmup``, and peak memory (GiB)."""
    for _ in range(warmup):
        fn()
    _peak_gib(device, reset=True)
    times = []
    for _ in range(repeats):
        t = _clock(device)
        fn()
        times.append(_clock(device) - t)
    return statistics.median(times), _peak_gib(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Measured dense matrix-multiply rate (TFLOP/s) of this device in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec, _ = timed(lambda: a @ b, device, repeats=repeats, warmup=2)
    return 2 * n**3 / sec / 1e12


def _load_average() -> float | None:
    """The machine's 1-minute load average (other processes competing for the CPUs show up here)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def extraction_fn(sd, strategy: str, img_size: int, ensemble: int, cond, image, z_cached):
    """A closure extracting ``up_blocks[1]`` features of one image the way ``strategy`` does."""
    e, dev, scale = ensemble, sd.device, sd.vae.config.scaling_factor
    vae_input = {"dift": image.expand(e, -1, -1, -1), "original": image, "ours": image, "ours-cached": None}[strategy]
    noise = torch.randn(e, 4, img_size // 8, img_size // 8, device=dev)

    @torch.no_grad()
    def run():
        z0 = z_cached if vae_input is None else sd.vae.encode(vae_input).latent_dist.sample() * scale
        z_t = add_noise(z0.expand(e, -1, -1, -1).float(), noise, 50, sd.alphas_cumprod.to(dev)).to(sd.dtype)
        early = strategy in ("ours", "ours-cached")
        return unet_readout(sd.unet, z_t, 50, cond.expand(e, -1, -1), (1,), early_exit=early)[1].float().mean(0)

    return run


def bench_extraction(sd, img_sizes=(768,), ensembles=(1, 8), repeats: int = 3, warmup: int = 1) -> list[dict]:
    """Time every strategy × size × ensemble for the loaded model's precision (``warmup`` untimed runs, then the
    median of ``repeats``); also checks that ``ours`` gives the same features as ``original`` (same noise)."""
    dev, cond = sd.device, encode_text(sd, [""])
    rows = []
    for s in img_sizes:
        g = torch.Generator().manual_seed(0)
        image = (torch.rand(1, 3, s, s, generator=g) * 2 - 1).to(dev, sd.dtype)
        image = image.contiguous(memory_format=getattr(sd, "vae_memory_format", torch.contiguous_format))
        with torch.no_grad():
            z_cached = sd.vae.encode(image).latent_dist.mean * sd.vae.config.scaling_factor
        for e in ensembles:
            for strategy in STRATEGIES:
                torch.manual_seed(0)
                fn = extraction_fn(sd, strategy, s, e, cond, image, z_cached)
                sec, peak = timed(fn, dev, repeats=repeats, warmup=warmup)
                rows.append({"strategy": strategy, "img_size": s, "ensemble": e,
                             "precision": sd.identity.get("precision", "fp32"), "seconds_per_image": sec,
                             "peak_gib": peak})
        # early exit vs whole UNet on the same noised latents: the features must be identical
        noise = torch.randn(2, 4, s // 8, s // 8, generator=torch.Generator().manual_seed(2)).to(dev)
        z_t = add_noise(z_cached.float().expand(2, -1, -1, -1), noise, 50, sd.alphas_cumprod.to(dev)).to(sd.dtype)
        with torch.no_grad():
            early, whole = (unet_readout(sd.unet, z_t, 50, cond.expand(2, -1, -1), (1,), x)[1].float()
                            for x in (True, False))
        rows.append({"strategy": "check:early_exit_equals_full", "img_size": s, "ensemble": 2,
                     "precision": sd.identity.get("precision"), "max_abs_diff": (early - whole).abs().max().item(),
                     "equal": bool(torch.equal(early, whole))})
    return rows


def bench_train_step(sd, batch: int = 3, img_size: int = 768, gradient_checkpointing: bool = False,
                     repeats: int = 3) -> dict:
    """One optimisation step of a 75-token prompt on ``batch`` random pairs at ``img_size`` (latents given)."""
    dev = sd.device
    prompt = LearnedPrompt.initialise(sd, "single", n_tokens=75, seed=0).to(dev)
    opt = torch.optim.Adam(prompt.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2 * batch, 4, img_size // 8, img_size // 8, generator=g).to(dev)
    kps = [(torch.rand(10, 2, generator=g) * (img_size - 1)).to(dev) for _ in range(2 * batch)]

    def step():
        opt.zero_grad(set_to_none=True)
        cond = prompt(sd, ["x"] * batch).repeat(2, 1, 1)
        z_t = add_noise(z0, torch.randn_like(z0), 261, sd.alphas_cumprod.to(dev)).to(sd.dtype)
        f = unet_readout(sd.unet, z_t, 261, cond, (1,))[1]
        loss = batch_loss(f[:batch], f[batch:], kps[:batch], kps[batch:], img_size)
        loss.backward()
        opt.step()
        return loss

    with checkpointing(sd.unet, gradient_checkpointing):
        sec, peak = timed(step, dev, repeats=repeats)
    return {"batch_pairs": batch, "img_size": img_size, "precision": sd.identity.get("precision"),
            "gradient_checkpointing": gradient_checkpointing, "seconds_per_step": sec, "peak_gib": peak}


def bench_throughput(sd, n_images: int = 16, img_size: int = 768, ensemble: int = 8, batch_size: int = 8) -> dict:
    """Evaluation-style extraction of ``n_images`` distinct images with the :class:`FeatureExtractor` (VAE once
    per image, early exit, ensemble, batched UNet calls), as a full-benchmark run with per-image caching does:
    each unique image is extracted once and reused by every pair it is in. Returns images per second."""
    images = _images(n_images + 1)
    fx = FeatureExtractor(sd, layers=(1,), timestep=50, ensemble=ensemble, img_size=img_size, batch_size=batch_size)
    cond = encode_text(sd, [""])
    fx(images[:1], cond)  # warm-up
    _peak_gib(sd.device, reset=True)
    t = _clock(sd.device)
    fx(images[1:], cond)
    sec = _clock(sd.device) - t
    return {"n_images": n_images, "img_size": img_size, "ensemble": ensemble, "unet_batch": batch_size,
            "precision": sd.identity.get("precision"), "images_per_second": n_images / sec,
            "peak_gib": _peak_gib(sd.device),
            "spair_test_minutes": 1800 / (n_images / sec) / 60}  # SPair-71k test: ~1.8k unique images


def run_bench(model: str = "sd21-random", device: str = "cpu", precisions=("bf16",), img_sizes=(768, 512),
              ensembles=(1, 8), repeats: int = 3, train: bool = True, train_batch: int = 3,
              throughput_images: int = 16, channels_last: bool | None = None, compile: bool = False,
              log=print) -> dict:
    """The whole harness in one run: matmul rate, extraction strategies, training step, evaluation throughput,
    for each precision. The model is built once and cast per precision; ``channels_last`` / ``compile`` as in
    :func:`~sd4match_utils.models.apply_fast_path`."""
    dev = torch.device(device)
    base = load_sd(model, device="cpu", precision="fp32")
    result = {"environment": environment(dev), "model": base.identity, "matmul_tflops": {}, "extraction": [],
              "train_step": [], "throughput": []}
    for precision in precisions:
        dtype = PRECISIONS[precision]
        result["matmul_tflops"][precision] = matmul_tflops(dev, dtype, n=4096 if dev.type == "cuda" else 1024)
        parts = {k: (freeze(copy.deepcopy(getattr(base, k)), dev, dtype) if k in ("unet", "vae", "text_encoder")
                     else getattr(base, k)) for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
        sd = SDModel(**parts, identity={**base.identity, "precision": precision}, device=dev, dtype=dtype)
        apply_fast_path(sd, channels_last=channels_last, compile=compile)
        for row in bench_extraction(sd, img_sizes=img_sizes, ensembles=ensembles, repeats=repeats):
            result["extraction"].append(row)
            log(f"{precision} {row}")
        for ckpt in (False, True) if train else ():
            result["train_step"].append(bench_train_step(sd, train_batch, img_sizes[0], ckpt, repeats))
            log(str(result["train_step"][-1]))
        if throughput_images:
            result["throughput"].append(bench_throughput(sd, throughput_images, img_sizes[0], max(ensembles)))
            log(str(result["throughput"][-1]))
        del sd, parts
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result


def bench_cpu_path(model: str = "sd21-random", device: str = "cpu", fast_precision: str = "auto",
                   img_sizes=(512, 768), ensembles=(1, 8), channels_last: bool | None = None, compile: bool = False,
                   log=print) -> dict:
    """Per-image ``FeatureExtractor`` time (VAE once, E noise copies through the UNet up to ``up_blocks[1]`` in one
    call) on two paths: ``fp32 eager`` (default layout, no compile) and ``fast`` (``fast_precision``, ``auto``
    resolved for real weights; channels-last VAE where ``apply_fast_path`` applies it; ``compile``). Each path loads
    the model afresh (the other one freed, so the peak memory is its own), extracts per size one warm-up image at
    E = 1 (``first_image_seconds``, compilation included), then one timed image per E, VAE and UNet timed apart.
    The fast path's features are compared with fp32's on the same images and noise (``‖f − f32‖ / ‖f32‖``, mean
    per-location cosine). Returns ``{"paths", "rows", "feature_diff"}``."""
    dev = torch.device(device)
    fast = resolve_precision(fast_precision, dev)
    paths = [{"path": "fp32 eager", "precision": "fp32", "channels_last": False, "compile": False},
             {"path": "fast", "precision": fast, "channels_last": channels_last, "compile": compile}]
    images = _images(1 + len(ensembles))  # one warm-up image, one per ensemble size
    rows, feats = {}, {}
    for p in paths:
        t = time.perf_counter()
        sd = load_sd(model, device=dev, precision=p["precision"], channels_last=False)
        apply_fast_path(sd, channels_last=p["channels_last"], compile=p["compile"])
        p["channels_last"] = sd.vae_memory_format == torch.channels_last
        p["load_seconds"] = time.perf_counter() - t
        cond = encode_text(sd, [""])
        for s in img_sizes:
            fx = FeatureExtractor(sd, layers=(1,), ensemble=1, img_size=s, batch_size=1)
            t = _clock(dev)
            fx(images[:1], cond)
            first = _clock(dev) - t
            for e, image in zip(ensembles, images[1:]):
                fx = FeatureExtractor(sd, layers=(1,), ensemble=e, img_size=s, batch_size=e)
                _peak_gib(dev, reset=True)
                t0 = _clock(dev)
                z0 = fx.latents([image])
                t1 = _clock(dev)
                f = fx.features_from_latents(z0, cond, [image_key(image)])[1]
                t2 = _clock(dev)
                row = {**{k: p[k] for k in ("path", "precision", "channels_last", "compile")}, "img_size": s,
                       "ensemble": e, "seconds_per_image": t2 - t0, "vae_seconds": t1 - t0, "unet_seconds": t2 - t1,
                       "peak_gib": _peak_gib(dev), "first_image_seconds": first, "load_1min": _load_average()}
                rows[p["path"], s, e] = row
                feats[p["path"], s, e] = f.float().cpu()
                log(str(row))
        del sd, fx, cond
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    diffs = []
    for s in img_sizes:
        for e in ensembles:
            ref, f = feats["fp32 eager", s, e], feats["fast", s, e]
            cosine = torch.nn.functional.cosine_similarity(f.flatten(2), ref.flatten(2), dim=1).mean()
            diffs.append({"img_size": s, "ensemble": e, "precision": fast,
                          "rel_diff": float((f - ref).norm() / ref.norm().clamp_min(1e-30)),
                          "mean_cosine": float(cosine)})
            row = rows["fast", s, e]
            row["speedup_vs_fp32"] = rows["fp32 eager", s, e]["seconds_per_image"] / row["seconds_per_image"]
            row["rel_diff_vs_fp32"] = diffs[-1]["rel_diff"]
    return {"paths": paths, "rows": list(rows.values()), "feature_diff": diffs}


def run_quick(model: str = "sd21-random", device: str = "cpu", fast_precision: str = "auto", img_sizes=(512, 768),
              ensembles=(1, 8), strategy_size: int | None = 512, channels_last: bool | None = None,
              compile: bool = False, log=print) -> dict:
    """``sd4match bench --quick``: what a CPU user runs. The CPU path against fp32 eager
    (:func:`bench_cpu_path`), then the extraction strategies (dift / original / ours / ours-cached) on the fast
    path at ``strategy_size`` and the largest E, one timed run each without warm-up (``None``: skipped), and the
    dense matmul rates. Wall time of the whole run is recorded."""
    t = time.perf_counter()
    dev = torch.device(device)
    fast = resolve_precision(fast_precision, dev)
    result = {"environment": environment(dev), "quick": True, "matmul_tflops": {}, "extraction": [],
              "train_step": [], "throughput": []}
    for precision in dict.fromkeys(("fp32", fast)):
        result["matmul_tflops"][precision] = matmul_tflops(dev, PRECISIONS[precision], n=1024)
    result["cpu_path"] = bench_cpu_path(model, device, fast, img_sizes, ensembles, channels_last, compile, log)
    result["model"] = {"model": model}
    if strategy_size:
        sd = load_sd(model, device=dev, precision=fast, channels_last=False)
        apply_fast_path(sd, channels_last=channels_last, compile=compile)
        result["model"] = {**sd.identity}
        for row in bench_extraction(sd, img_sizes=(strategy_size,), ensembles=(max(ensembles),), repeats=1,
                                    warmup=0):
            result["extraction"].append(row)
            log(f"{fast} {row}")
        del sd
    result["wall_seconds"] = time.perf_counter() - t
    result["environment"]["load_average_1min_end"] = _load_average()
    return result


def environment(device: torch.device) -> dict:
    """Versions, machine, CPU model name (``/proc/cpuinfo``), logical cores, native bf16 flags, and whether
    another process kept the CPUs busy (1-minute load average at the start)."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        cpu = None
    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "cpu_model": cpu,
            "cpu_cores": os.cpu_count(), "cpu_bf16": cpu_supports_bf16(),
            "cpu_bf16_flags": sorted(_cpu_flags() & set(CPU_BF16_FLAGS))}
    if (load := _load_average()) is not None:
        info["load_average_1min"] = load
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@functools.cache
def flop_counts(img_size: int, arch: str = "sd21") -> dict[str, int]:
    """Matrix FLOPs (``FlopCounterMode``: matmuls, convolutions, attention on the math backend) of one image through
    the VAE encoder and the UNet up to ``up_blocks[1]`` of ``arch`` (``sd21``, ``tiny``), on the meta device."""
    unet_config, vae_config = ARCHITECTURES[arch]
    with torch.device("meta"):
        unet, vae = diffusers.UNet2DConditionModel(**unet_config), diffusers.AutoencoderKL(**vae_config)
        image, z = torch.empty(1, 3, img_size, img_size), torch.empty(1, 4, img_size // 8, img_size // 8)
        cond = torch.empty(1, 77, unet_config["cross_attention_dim"])
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as vae_flops:
        vae.encode(image)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as unet_flops:
        unet_readout(unet, z, 50, cond, (1,), early_exit=True)
    return {"vae_encoder": vae_flops.get_total_flops(), "unet_to_up1": unet_flops.get_total_flops()}


def flop_lower_bound(strategy: str, ensemble: int, img_size: int, arch: str = "sd21") -> float:
    """Matrix FLOPs the strategy cannot avoid: its VAE encodes and E UNet passes up to ``up_blocks[1]``."""
    c = flop_counts(img_size, arch)
    vae = {"dift": ensemble, "original": 1, "ours": 1, "ours-cached": 0}[strategy] * c["vae_encoder"]
    return float(vae + ensemble * c["unet_to_up1"])


def _gib(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _table(header: str, cells) -> list[str]:
    """A Markdown table: ``header`` is ``"a | b | c"``, ``cells`` one sequence of values per row."""
    return [f"| {header} |", "|" + "---|" * len(header.split(" | "))] + \
        [f"| {' | '.join(map(str, row))} |" for row in cells]


def render_markdown(result: dict, title: str) -> str:
    """Markdown tables of a :func:`run_bench` or :func:`run_quick` result."""
    env = result["environment"]
    cpu_name = env.get("cpu_model") or env.get("processor")
    where = env.get("gpu") or f"CPU ({cpu_name}, {env.get('cpu_threads')} threads)"
    model = (result.get("model") or {}).get("model", "sd21-random")
    what = ("SD 2-1's full-size architecture with random weights (`sd21-random`)" if model == "sd21-random"
            else f"model `{model}`")
    timing = ("One timed run per case (the CPU path after one warm-up image per size; the strategies without "
              "warm-up)" if result.get("quick") else "Median of the timed runs after 1 warm-up")
    lines = [f"## {title}", "", f"{where}; torch {env['torch']}, diffusers "
             f"{env['diffusers']}, Python {env['python']}; {env['date']}. {what}, read-out `up_blocks[1]`, t = 50. "
             f"{timing}; peak memory is GPU memory allocated on CUDA, the process's peak resident memory on the CPU.",
             ""]
    if result.get("wall_seconds") is not None:
        load = [env.get(k) for k in ("load_average_1min", "load_average_1min_end")]
        busy = (f" Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f} (more than the threads used "
                "means other processes shared the CPUs)." if None not in load else "")
        lines += [f"Whole run: {result['wall_seconds'] / 60:.1f} min.{busy}", ""]
    rates = result.get("matmul_tflops", {})
    if rates:
        lines += ["Measured dense matmul rate: " + ", ".join(f"{p} {r:.3g} TFLOP/s" for p, r in rates.items()), ""]
    if cpu := result.get("cpu_path"):
        fast = next(p for p in cpu["paths"] if p["path"] == "fast")
        how = [fast["precision"]] + ["channels-last VAE"] * bool(fast.get("channels_last")) + \
            ["torch.compile"] * bool(fast.get("compile"))
        firsts = sorted({(r["path"], r["img_size"], r["first_image_seconds"]) for r in cpu["rows"]})
        lines += [f"Per-image feature extraction (`FeatureExtractor`, one image: VAE once, E noise copies through the "
                  f"UNet up to `up_blocks[1]` in one call), fp32 eager against the fast path ({', '.join(how)}):", ""]
        lines += _table(
            "path | precision | size | E | s / image | VAE s | UNet s | × vs fp32 | peak GiB | rel. diff vs fp32",
            [(r["path"], r["precision"], r["img_size"], r["ensemble"], f"{r['seconds_per_image']:.2f}",
              f"{r['vae_seconds']:.2f}", f"{r['unet_seconds']:.2f}", f"{r.get('speedup_vs_fp32', 1):.2f}",
              _gib(r.get("peak_gib")), f"{r['rel_diff_vs_fp32']:.2e}" if "rel_diff_vs_fp32" in r else "–")
             for r in cpu["rows"]])
        lines += ["", "Features of the fast path against fp32 (same images, same noise): "
                  + "; ".join(f"{d['img_size']}², E = {d['ensemble']}: relative difference {d['rel_diff']:.2e}, "
                              f"mean cosine {d['mean_cosine']:.5f}" for d in cpu["feature_diff"]) + ".",
                  "", "First image per size (warm-up, E = 1; includes compilation when compiled): "
                  + "; ".join(f"{p} {s}²: {sec:.1f} s" for p, s, sec in firsts) + ".", ""]
    if not result["extraction"]:
        return "\n".join(lines) + "\n"
    ext = [r for r in result["extraction"] if not r["strategy"].startswith("check")]
    checks = [r for r in result["extraction"] if r["strategy"].startswith("check")]
    cells = []
    for r in ext:
        ref = {x["strategy"]: x["seconds_per_image"] for x in ext
               if (x["precision"], x["img_size"], x["ensemble"]) == (r["precision"], r["img_size"], r["ensemble"])}
        rate, sec = rates.get(r["precision"]), r["seconds_per_image"]
        bound = flop_lower_bound(r["strategy"], r["ensemble"], r["img_size"]) / (rate * 1e12) * 1e3 if rate else 0
        cells.append((r["precision"], r["img_size"], r["ensemble"], r["strategy"], f"{sec * 1e3:.1f} ms",
                      _gib(r.get("peak_gib")), f"{ref['dift'] / sec:.2f}", f"{ref['original'] / sec:.2f}",
                      f"{bound:.1f}" if rate else "–"))
    header = "precision | size | E | strategy | s / image | peak GiB | × vs dift | × vs original | FLOP bound (ms)"
    lines += _table(header, cells)
    if checks:
        ok = all(c["equal"] for c in checks)
        lines += ["", f"Early exit vs whole UNet on the same noised latents: {'bit-identical' if ok else 'DIFFERENT'} "
                  f"features in every case (max |Δ| = {max(c['max_abs_diff'] for c in checks):g})."]
    if result.get("train_step"):
        lines += ["", "One training step of a 75-token prompt (forward to `up_blocks[1]`, Gaussian cross-entropy, "
                  "backward, Adam), latents given:", ""]
        lines += _table("precision | batch (pairs) | size | gradient checkpointing | s / step | peak GiB | paper",
                        [(r["precision"], r["batch_pairs"], r["img_size"], "yes" if r["gradient_checkpointing"] else
                          "no", f"{r['seconds_per_step']:.3f}", _gib(r.get("peak_gib")), "≈ 22 GB (fp16, whole UNet)")
                         for r in result["train_step"]])
    if result.get("throughput"):
        lines += ["", "Evaluation-style extraction throughput (distinct images, `FeatureExtractor`: VAE once per "
                  "image, early exit, batched ensemble):", ""]
        lines += _table("precision | size | E | UNet rows / call | images / s | SPair-71k test (~1.8k images)",
                        [(r["precision"], r["img_size"], r["ensemble"], r["unet_batch"],
                          f"{r['images_per_second']:.2f}", f"{r['spair_test_minutes']:.1f} min")
                         for r in result["throughput"]])
    return "\n".join(lines) + "\n"
