"""Speed and memory of feature extraction and of one training step, on SD 2-1's full-size architecture.

Extraction strategies, per image, ensemble E:
    dift      VAE encode repeated for every ensemble copy, whole UNet (the DIFT-style way)
    original  VAE once, whole UNet (the original SD4Match way)
    ours      VAE once, UNet stopped after the read-out block (early exit)
    ours-cached  the same with the latent already cached (no VAE at all)
Each runs in a given precision (weights and activations in that dtype). Training: one Adam step of a learned
prompt on a batch of pairs (forward to ``up_blocks[1]``, Gaussian cross-entropy, backward into the prompt).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from .features import add_noise, unet_readout

#: FLOP lower bounds at 768² (SPEC, issue text): VAE encoder and UNet up to ``up_blocks[1]``.
FLOPS_768 = {"vae_encoder": 2.61e12, "unet_to_up1": 1.13e12}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_PROC = "/proc/self/status"


def _rss_hwm_kib() -> int | None:
    """Peak resident set size of this process (Linux ``VmHWM``), in KiB."""
    try:
        with open(_PROC) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: writing 5 to clear_refs resets the peak RSS to the current RSS
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _peak_gib(device: torch.device) -> float | None:
    """Peak memory since the last reset: GPU memory allocated on CUDA, process peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = _rss_hwm_kib()
    return None if kib is None else kib / 2**20


def timed(fn, device: torch.device, repeats: int = 3, warmup: int = 1) -> tuple[float, float | None]:
    """Median wall time (s) of ``fn()`` over ``repeats`` runs after ``warmup``, and peak GPU memory (GiB)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), _peak_gib(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Measured dense matrix-multiply rate (TFLOP/s) of this device in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec, _ = timed(lambda: a @ b, device, repeats=repeats, warmup=2)
    return 2 * n**3 / sec / 1e12


@dataclass
class ExtractionCase:
    strategy: str
    img_size: int
    ensemble: int
    precision: str


@torch.no_grad()
def extraction_fn(sd, case: ExtractionCase, cond: torch.Tensor, image: torch.Tensor, z_cached: torch.Tensor):
    """A closure extracting ``up_blocks[1]`` features of one image the way ``case.strategy`` does."""
    e, dev = case.ensemble, sd.device
    scale = sd.vae.config.scaling_factor
    noise = torch.randn(e, 4, case.img_size // 8, case.img_size // 8, device=dev)
    cond_e = cond.expand(e, -1, -1)

    def unet(z0, early):
        z_t = add_noise(z0.float(), noise, 50, sd.alphas_cumprod.to(dev)).to(sd.dtype)
        return unet_readout(sd.unet, z_t, 50, cond_e, (1,), early_exit=early)[1].float().mean(0)

    if case.strategy == "dift":
        return lambda: unet(sd.vae.encode(image.expand(e, -1, -1, -1)).latent_dist.sample() * scale, False)
    if case.strategy == "original":
        return lambda: unet((sd.vae.encode(image).latent_dist.sample() * scale).expand(e, -1, -1, -1), False)
    if case.strategy == "ours":
        return lambda: unet((sd.vae.encode(image).latent_dist.sample() * scale).expand(e, -1, -1, -1), True)
    if case.strategy == "ours-cached":
        return lambda: unet(z_cached.expand(e, -1, -1, -1), True)
    raise ValueError(case.strategy)


def bench_extraction(sd, img_sizes=(768,), ensembles=(1, 8), strategies=("dift", "original", "ours", "ours-cached"),
                     repeats: int = 3, warmup: int = 1) -> list[dict]:
    """Time every strategy × size × ensemble for the loaded model's precision (``warmup`` untimed runs, then the
    median of ``repeats``); also checks that ``ours`` gives the same features as ``original`` (same noise)."""
    from .conditioning import encode_text

    dev = sd.device
    cond = encode_text(sd, [""])
    rows = []
    for s in img_sizes:
        g = torch.Generator().manual_seed(0)
        image = (torch.rand(1, 3, s, s, generator=g) * 2 - 1).to(dev, sd.dtype)
        image = image.contiguous(memory_format=getattr(sd, "vae_memory_format", torch.contiguous_format))
        with torch.no_grad():
            z_cached = sd.vae.encode(image).latent_dist.mean * sd.vae.config.scaling_factor
        for e in ensembles:
            for strat in strategies:
                case = ExtractionCase(strat, s, e, sd.identity.get("precision", "fp32"))
                torch.manual_seed(0)
                fn = extraction_fn(sd, case, cond, image, z_cached)
                sec, peak = timed(fn, dev, repeats=repeats, warmup=warmup)
                rows.append({**case.__dict__, "seconds_per_image": sec, "peak_gib": peak})
        # early exit vs whole UNet on the same noised latents: the features must be identical
        noise = torch.randn(2, 4, s // 8, s // 8, generator=torch.Generator().manual_seed(2)).to(dev)
        z_t = add_noise(z_cached.float().expand(2, -1, -1, -1), noise, 50, sd.alphas_cumprod.to(dev)).to(sd.dtype)
        with torch.no_grad():
            early = unet_readout(sd.unet, z_t, 50, cond.expand(2, -1, -1), (1,), True)[1].float()
            whole = unet_readout(sd.unet, z_t, 50, cond.expand(2, -1, -1), (1,), False)[1].float()
        rows.append({"strategy": "check:early_exit_equals_full", "img_size": s, "ensemble": 2,
                     "precision": sd.identity.get("precision"), "max_abs_diff": (early - whole).abs().max().item(),
                     "equal": bool(torch.equal(early, whole))})
    return rows


def bench_train_step(sd, batch: int = 3, img_size: int = 768, gradient_checkpointing: bool = False,
                     repeats: int = 3) -> dict:
    """One optimisation step of a 75-token prompt on ``batch`` random pairs at ``img_size`` (latents given)."""
    from .conditioning import LearnedPrompt
    from .loss import batch_loss

    dev = sd.device
    prompt = LearnedPrompt.initialise(sd, "single", n_tokens=75, seed=0).to(dev)
    opt = torch.optim.Adam(prompt.parameters(), lr=1e-2)
    h = img_size // 8
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2 * batch, 4, h, h, generator=g).to(dev)
    kps = [torch.rand(10, 2, generator=g) * (img_size - 1) for _ in range(2 * batch)]
    def step():
        opt.zero_grad(set_to_none=True)
        cond = prompt(sd, ["x"] * batch).repeat(2, 1, 1)
        noise = torch.randn_like(z0)
        z_t = add_noise(z0, noise, 261, sd.alphas_cumprod.to(dev)).to(sd.dtype)
        f = unet_readout(sd.unet, z_t, 261, cond, (1,))[1]
        loss = batch_loss(f[:batch], f[batch:], [k.to(dev) for k in kps[:batch]],
                          [k.to(dev) for k in kps[batch:]], img_size)
        loss.backward()
        opt.step()
        return loss

    from .train import gradient_checkpointing as checkpointing  # exactly what `sd4match train` does

    with checkpointing(sd.unet, gradient_checkpointing):
        sec, peak = timed(step, dev, repeats=repeats)
    return {"batch_pairs": batch, "img_size": img_size, "precision": sd.identity.get("precision"),
            "gradient_checkpointing": gradient_checkpointing, "seconds_per_step": sec, "peak_gib": peak}


def bench_throughput(sd, n_images: int = 16, img_size: int = 768, ensemble: int = 8, batch_size: int = 8,
                     timestep: int = 50) -> dict:
    """Evaluation-style extraction of ``n_images`` distinct images with the :class:`FeatureExtractor` (VAE once
    per image, early exit, ensemble, batched UNet calls), as a full-benchmark run with per-image caching does:
    each unique image is extracted once and reused by every pair it is in. Returns images per second."""
    import numpy as np
    from PIL import Image

    from .conditioning import encode_text
    from .features import FeatureExtractor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n_images + 1)]
    fx = FeatureExtractor(sd, layers=(1,), timestep=timestep, ensemble=ensemble, img_size=img_size,
                          batch_size=batch_size)
    cond = encode_text(sd, [""])
    fx(images[:1], cond)  # warm-up
    _sync(sd.device)
    _reset_peak(sd.device)
    t = time.perf_counter()
    fx(images[1:], cond)
    _sync(sd.device)
    sec = time.perf_counter() - t
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
    import copy

    from .models import PRECISIONS, SDModel, apply_fast_path, freeze, load_sd

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
        if train:
            for ckpt in (False, True):
                row = bench_train_step(sd, batch=train_batch, img_size=img_sizes[0], gradient_checkpointing=ckpt,
                                       repeats=repeats)
                result["train_step"].append(row)
                log(str(row))
        if throughput_images:
            row = bench_throughput(sd, throughput_images, img_sizes[0], max(ensembles))
            result["throughput"].append(row)
            log(str(row))
        del sd, parts
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------- CPU path (quick)
def _quick_images(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` over the whole map (float32)."""
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over locations of the cosine between the two maps' feature vectors (``(B, C, h, w)``)."""
    a, b = a.float().cpu().flatten(2), b.float().cpu().flatten(2)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def bench_cpu_path(model: str = "sd21-random", device: str = "cpu", fast_precision: str = "auto",
                   img_sizes=(512, 768), ensembles=(1, 8), channels_last: bool | None = None, compile: bool = False,
                   log=print) -> dict:
    """Per-image extraction time of the ``FeatureExtractor`` (one image: the VAE once, then E noise copies through
    the UNet up to ``up_blocks[1]``, one call of E rows) on two paths, side by side in one process:

    - ``fp32 eager``: fp32 weights, default layout, no compile (the default of earlier versions);
    - ``fast``: ``fast_precision`` (``auto``: what :func:`~sd4match_utils.models.resolve_precision` picks for real
      weights on ``device``), channels-last VAE where :func:`~sd4match_utils.models.apply_fast_path` applies it,
      ``torch.compile`` when ``compile``.

    Each path loads the model afresh (the other path's model is freed first, so the peak memory is the path's own)
    and extracts, per size, one warm-up image at E = 1 (with ``compile`` this includes the compilation: reported as
    ``first_image_seconds``), then one timed image per E (VAE and UNet timed separately). The fast path's features
    are compared with fp32's on the same images and noise: relative difference ``‖f − f32‖ / ‖f32‖`` and mean
    per-location cosine. Peak memory: the process's peak resident memory during the timed image (weights
    included). Returns ``{"paths", "rows", "feature_diff"}``."""
    import gc

    from .conditioning import encode_text
    from .features import FeatureExtractor
    from .models import apply_fast_path, load_sd, resolve_precision

    dev = torch.device(device)
    fast = resolve_precision(fast_precision, dev)
    paths = [{"path": "fp32 eager", "precision": "fp32", "channels_last": False, "compile": False},
             {"path": "fast", "precision": fast, "channels_last": channels_last, "compile": compile}]
    images = _quick_images(1 + len(ensembles))  # one warm-up image, one per ensemble size
    rows, feats = [], {}
    for p in paths:
        t = time.perf_counter()
        sd = load_sd(model, device=dev, precision=p["precision"], channels_last=False)
        apply_fast_path(sd, channels_last=p["channels_last"], compile=p["compile"])
        p["channels_last"] = sd.vae_memory_format == torch.channels_last
        p["load_seconds"] = time.perf_counter() - t
        cond = encode_text(sd, [""])
        for s in img_sizes:
            fx = FeatureExtractor(sd, layers=(1,), ensemble=1, img_size=s, batch_size=1)
            _sync(dev)
            t = time.perf_counter()
            fx(images[:1], cond)
            _sync(dev)
            first = time.perf_counter() - t
            for j, e in enumerate(ensembles):
                fx = FeatureExtractor(sd, layers=(1,), ensemble=e, img_size=s, batch_size=e)
                image = images[1 + j]
                _sync(dev)
                _reset_peak(dev)
                t0 = time.perf_counter()
                z0 = fx.latents([image])
                _sync(dev)
                t1 = time.perf_counter()
                from .features import image_key

                f = fx.features_from_latents(z0, cond, [image_key(image)])[1]
                _sync(dev)
                t2 = time.perf_counter()
                row = {**{k: p[k] for k in ("path", "precision", "channels_last", "compile")}, "img_size": s,
                       "ensemble": e, "seconds_per_image": t2 - t0, "vae_seconds": t1 - t0, "unet_seconds": t2 - t1,
                       "peak_gib": _peak_gib(dev), "first_image_seconds": first, "load_1min": _load_average()}
                rows.append(row)
                feats[(p["path"], s, e)] = f.cpu()
                log(str(row))
        del sd, fx, cond
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    diffs = []
    for s in img_sizes:
        for e in ensembles:
            ref, f = feats[("fp32 eager", s, e)], feats[("fast", s, e)]
            diffs.append({"img_size": s, "ensemble": e, "precision": fast, "rel_diff": _rel_diff(f, ref),
                          "mean_cosine": _mean_cosine(f, ref)})
    for r in rows:
        if r["path"] == "fast":
            ref = next(x for x in rows if x["path"] == "fp32 eager" and (x["img_size"], x["ensemble"])
                       == (r["img_size"], r["ensemble"]))
            r["speedup_vs_fp32"] = ref["seconds_per_image"] / r["seconds_per_image"]
            r["rel_diff_vs_fp32"] = next(d["rel_diff"] for d in diffs
                                         if (d["img_size"], d["ensemble"]) == (r["img_size"], r["ensemble"]))
    return {"paths": paths, "rows": rows, "feature_diff": diffs}


def run_quick(model: str = "sd21-random", device: str = "cpu", fast_precision: str = "auto", img_sizes=(512, 768),
              ensembles=(1, 8), strategy_size: int | None = 512, channels_last: bool | None = None,
              compile: bool = False, log=print) -> dict:
    """``sd4match bench --quick``: what a CPU user runs. The CPU path against fp32 eager
    (:func:`bench_cpu_path`), then the extraction strategies (dift / original / ours / ours-cached) on the fast
    path at ``strategy_size`` and the largest E, one timed run each without warm-up (``None``: skipped), and the
    dense matmul rates. Wall time of the whole run is recorded."""
    from .models import apply_fast_path, load_sd, resolve_precision

    t = time.perf_counter()
    dev = torch.device(device)
    fast = resolve_precision(fast_precision, dev)
    result = {"environment": environment(dev), "quick": True, "matmul_tflops": {}, "extraction": [],
              "train_step": [], "throughput": []}
    for precision in dict.fromkeys(("fp32", fast)):
        result["matmul_tflops"][precision] = matmul_tflops(dev, _dtype(precision), n=1024)
    result["cpu_path"] = bench_cpu_path(model, device, fast, img_sizes, ensembles, channels_last, compile, log)
    if strategy_size:
        sd = load_sd(model, device=dev, precision=fast, channels_last=False)
        apply_fast_path(sd, channels_last=channels_last, compile=compile)
        result["model"] = {**sd.identity}
        for row in bench_extraction(sd, img_sizes=(strategy_size,), ensembles=(max(ensembles),), repeats=1,
                                    warmup=0):
            result["extraction"].append(row)
            log(f"{fast} {row}")
        del sd
    else:
        result["model"] = {"model": model}
    result["wall_seconds"] = time.perf_counter() - t
    result["environment"]["load_average_1min_end"] = _load_average()
    return result


def _load_average() -> float | None:
    """The machine's 1-minute load average (other processes competing for the CPUs show up here)."""
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _dtype(precision: str) -> torch.dtype:
    from .models import PRECISIONS

    return PRECISIONS[precision]


def render_cpu_path(cpu: dict) -> list[str]:
    """Markdown lines of a :func:`bench_cpu_path` result."""
    fast = next(p for p in cpu["paths"] if p["path"] == "fast")
    how = [fast["precision"]] + (["channels-last VAE"] if fast.get("channels_last") else []) + \
        (["torch.compile"] if fast.get("compile") else [])
    lines = [f"Per-image feature extraction (`FeatureExtractor`, one image: VAE once, E noise copies through the UNet "
             f"up to `up_blocks[1]` in one call), fp32 eager against the fast path ({', '.join(how)}):", "",
             "| path | precision | size | E | s / image | VAE s | UNet s | × vs fp32 | peak GiB | rel. diff vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in cpu["rows"]:
        speed = f"{r['speedup_vs_fp32']:.2f}" if "speedup_vs_fp32" in r else "1.00"
        diff = f"{r['rel_diff_vs_fp32']:.2e}" if "rel_diff_vs_fp32" in r else "–"
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "–"
        lines.append(f"| {r['path']} | {r['precision']} | {r['img_size']} | {r['ensemble']} | "
                     f"{r['seconds_per_image']:.2f} | {r['vae_seconds']:.2f} | {r['unet_seconds']:.2f} | {speed} | "
                     f"{peak} | {diff} |")
    lines += ["", "Features of the fast path against fp32 (same images, same noise): "
              + "; ".join(f"{d['img_size']}², E = {d['ensemble']}: relative difference {d['rel_diff']:.2e}, "
                          f"mean cosine {d['mean_cosine']:.5f}" for d in cpu["feature_diff"]) + "."]
    firsts = sorted({(r["path"], r["img_size"], r["first_image_seconds"]) for r in cpu["rows"]})
    lines += ["", "First image per size (warm-up, E = 1; includes compilation when compiled): "
              + "; ".join(f"{p} {s}²: {sec:.1f} s" for p, s, sec in firsts) + "."]
    return lines


def environment(device: torch.device) -> dict:
    import diffusers

    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    info.update(_cpu_info())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_info() -> dict:
    """CPU model name (``/proc/cpuinfo``), logical cores, native bf16 flags, and whether another process kept
    the CPUs busy (1-minute load average at the start)."""
    import os

    from .models import CPU_BF16_FLAGS, _cpu_flags, cpu_supports_bf16

    name = None
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    info = {"cpu_model": name, "cpu_cores": os.cpu_count(), "cpu_bf16": cpu_supports_bf16(),
            "cpu_bf16_flags": sorted(_cpu_flags() & set(CPU_BF16_FLAGS))}
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def flop_lower_bound(strategy: str, ensemble: int, img_size: int) -> float:
    """Matrix-multiply FLOPs the strategy cannot avoid (scaled from the 768² counts by pixel count)."""
    k = (img_size / 768) ** 2
    vae, unet = FLOPS_768["vae_encoder"] * k, FLOPS_768["unet_to_up1"] * k
    return {"dift": ensemble * vae, "original": vae, "ours": vae, "ours-cached": 0.0}[strategy] + ensemble * unet


def render_markdown(result: dict, title: str) -> str:
    """Markdown tables of a :func:`run_bench` result."""
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
    if result.get("cpu_path"):
        lines += render_cpu_path(result["cpu_path"]) + [""]
    if not result["extraction"]:
        return "\n".join(lines) + "\n"
    ext = [r for r in result["extraction"] if not r["strategy"].startswith("check")]
    checks = [r for r in result["extraction"] if r["strategy"].startswith("check")]
    lines += ["| precision | size | E | strategy | s / image | peak GiB | × vs dift | × vs original | FLOP bound (ms) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in ext:
        same = [x for x in ext if (x["precision"], x["img_size"], x["ensemble"]) == (r["precision"], r["img_size"], r["ensemble"])]
        ref = {x["strategy"]: x["seconds_per_image"] for x in same}
        rate = rates.get(r["precision"])
        bound = f"{flop_lower_bound(r['strategy'], r['ensemble'], r['img_size']) / (rate * 1e12) * 1e3:.1f}" if rate else "–"
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "–"
        lines.append(f"| {r['precision']} | {r['img_size']} | {r['ensemble']} | {r['strategy']} | "
                     f"{r['seconds_per_image'] * 1e3:.1f} ms | {peak} | {ref['dift'] / r['seconds_per_image']:.2f} | "
                     f"{ref['original'] / r['seconds_per_image']:.2f} | {bound} |")
    if checks:
        ok = all(c["equal"] for c in checks)
        lines += ["", f"Early exit vs whole UNet on the same noised latents: {'bit-identical' if ok else 'DIFFERENT'} "
                  f"features in every case (max |Δ| = {max(c['max_abs_diff'] for c in checks):g})."]
    if result.get("train_step"):
        lines += ["", "One training step of a 75-token prompt (forward to `up_blocks[1]`, Gaussian cross-entropy, "
                  "backward, Adam), latents given:", "",
                  "| precision | batch (pairs) | size | gradient checkpointing | s / step | peak GiB | paper |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["train_step"]:
            peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "–"
            lines.append(f"| {r['precision']} | {r['batch_pairs']} | {r['img_size']} | "
                         f"{'yes' if r['gradient_checkpointing'] else 'no'} | {r['seconds_per_step']:.3f} | {peak} | "
                         "≈ 22 GB (fp16, whole UNet) |")
    if result.get("throughput"):
        lines += ["", "Evaluation-style extraction throughput (distinct images, `FeatureExtractor`: VAE once per image, "
                  "early exit, batched ensemble):", "",
                  "| precision | size | E | UNet rows / call | images / s | SPair-71k test (~1.8k images) |",
                  "|---|---|---|---|---|---|"]
        for r in result["throughput"]:
            lines.append(f"| {r['precision']} | {r['img_size']} | {r['ensemble']} | {r['unet_batch']} | "
                         f"{r['images_per_second']:.2f} | {r['spair_test_minutes']:.1f} min |")
    return "\n".join(lines) + "\n"
