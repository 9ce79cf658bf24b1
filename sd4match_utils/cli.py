"""The ``sd4match`` command line: ``evaluate``, ``extract``, ``train``, ``import-official``, ``bench``,
``synthetic`` and ``pretrain-mini``.

    sd4match evaluate --dataset spair --data-root data/synthetic/SPair-71k --split test --model tiny \
        --prompt text --layer 1 --timestep 50 --ensemble 8 --matcher kernel_softmax --out runs/zs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from .cache import FolderLockedError
from .conditioning import FIXED_PROMPTS, prompt_text
from .data import DatasetFormatError
from .models import PRECISION_CHOICES, ModelNotAvailableError, resolve_precision, set_threads
from .settings import add_options, from_args


def _layers(text: str) -> list[int]:
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers expects comma-separated integers 0-3, got {text!r}") from None
    if not layers or any(l not in (0, 1, 2, 3) for l in layers):
        raise argparse.ArgumentTypeError(f"--layers must be a subset of 0,1,2,3, got {text!r}")
    return layers


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch uses (torch.set_num_threads; default: torch's choice, one per core)")


def build_parser() -> argparse.ArgumentParser:
    from .evaluate import EvalSettings
    from .train import TrainSettings

    parser = argparse.ArgumentParser(prog="sd4match",
                                     description="SD4Match: semantic matching with Stable Diffusion features")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="predict keypoints on a benchmark split and compute PCK")
    add_options(ev, EvalSettings)  # every setting; then the options of the run itself
    ev.add_argument("--out", required=True, type=Path, help="folder for predictions.csv and metrics.json")
    ev.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (finished pairs are "
                    "kept in OUT/shards)")
    ev.add_argument("--shard-size", type=int, default=200, help="pairs per saved shard of predictions")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads_arg(ev)

    ex = sub.add_parser("extract", help="write per-up-block feature maps of images to a safetensors file")
    ex.add_argument("--images", nargs="+", required=True, type=Path)
    ex.add_argument("--prompt", default="empty", help="text, empty, or a learned prompt file (.safetensors)")
    ex.add_argument("--category", default="object", help="category for --prompt text or a Class prompt")
    ex.add_argument("--layers", type=_layers, default=[0, 1, 2, 3])
    ex.add_argument("--timestep", type=int, default=None, help="default: the model's recommended (SD 2-1: 50)")
    ex.add_argument("--ensemble", type=int, default=8)
    ex.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    ex.add_argument("--compile", action="store_true", help="torch.compile the VAE encoder and UNet blocks (minutes "
                    "of compiling on a CPU; see benchmarks/RESULTS.md for when it pays)")
    add_options(ex, EvalSettings, only=("model", "precision"))  # the model options, declared as evaluate's
    _add_threads_arg(ex)
    add_options(ex, EvalSettings, only=("seed", "img_size", "latent", "device", "batch_size"))

    tr = sub.add_parser("train", help="learn a Single, Class or CPM prompt (SD frozen)")
    add_options(tr, TrainSettings)  # every setting (--epochs / --max-steps: one of); then the run's own options
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    tr.add_argument("--overwrite", action="store_true", help="replace a run already in --out (without it, or "
                    "--resume, such a folder is refused)")
    tr.add_argument("--out", required=True, type=Path)
    tr.add_argument("--quiet", action="store_true")
    _add_threads_arg(tr)

    im = sub.add_parser("import-official", help="convert the paper's ckpt.pt (CPM) or caption.pt (Single/Class)")
    im.add_argument("--kind", required=True, choices=["cpm", "caption"])
    im.add_argument("--file", required=True, type=Path, help="the official ckpt.pt or caption.pt")
    im.add_argument("--out", required=True, type=Path, help="folder for prompt.safetensors")
    im.add_argument("--model", default=None, help="optional: the SD the prompt belongs to (hub id, diffusers folder "
                    "or 'tiny'), to check the file against it and record it; without it the width comes from the "
                    "file, no download")
    im.add_argument("--dino", default="facebook/dinov2-base", help="CPM: DINOv2 it was learned with (id, folder, tiny)")
    im.add_argument("--cpm-features", choices=["patch", "pooled"], default="patch", help="CPM: feature variant")
    im.add_argument("--no-check-model", action="store_true", help="caption: accept BOS/EOS rows of another model")

    be = sub.add_parser("bench", help="speed / memory harness on SD 2-1's full-size architecture (random weights; "
                                      "runs benchmarks/bench.py of the repository checkout)")
    be.add_argument("--quick", action="store_true", help="what a CPU user runs (~10 min on 2 cores): fp32 eager "
                    "against the fast path (--precisions, default auto) at 512² and 768², E = 1 and 8, per-image "
                    "seconds, ratio, peak memory, features' difference from fp32; then the strategies on the fast "
                    "path at --strategy-size")
    be.add_argument("--model", default="sd21-random", help="sd21-random (default), tiny, a hub id or a folder")
    be.add_argument("--device", default="cpu")
    be.add_argument("--precisions", default=None, help="comma list of fp32,bf16,fp16,auto (default bf16; GPU: "
                    "bf16,fp16); with --quick: the fast path's one precision (default auto)")
    be.add_argument("--sizes", default=None, help="comma list of image sizes (default 768,512; --quick: 512,768)")
    be.add_argument("--strategy-size", type=int, default=None, help="--quick: image size of the dift / original / "
                    "ours / ours-cached comparison on the fast path (default: the smallest of --sizes; 0 skips it)")
    be.add_argument("--compile", action="store_true", help="torch.compile the fast path (inductor)")
    be.add_argument("--no-channels-last", action="store_true", help="keep the fast path's VAE in the default layout")
    _add_threads_arg(be)
    be.add_argument("--ensembles", default="1,8")
    be.add_argument("--repeats", type=int, default=None)
    be.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    be.add_argument("--throughput-images", type=int, default=None, help="images for the throughput measurement")
    be.add_argument("--title", default=None, help="heading of the Markdown report")
    be.add_argument("--out", required=True, type=Path, help="folder for bench.json and bench.md")

    syn = sub.add_parser("synthetic", help="write the embedded synthetic dataset in all three benchmark layouts")
    syn.add_argument("--out", required=True, type=Path, help="folder; gets SPair-71k/, PF-Pascal/, PF-Willow/")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--test-pairs", type=int, default=None, help="pairs in each layout's test split (default 36; "
                     "PF-Willow: rounded up per sub-class)")

    pm = sub.add_parser("pretrain-mini", help="pre-train the embedded model 'mini' from scratch on synthetic images")
    pm.add_argument("--out", required=True, type=Path, help="run folder; the model is written to OUT/model")
    budget = pm.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="optimiser steps over all stages")
    budget.add_argument("--minutes", type=float, help="wall-clock budget over all stages")
    pm.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    pm.add_argument("--seed", type=int, default=0)
    _add_threads_arg(pm)
    pm.add_argument("--pool-size", type=int, default=4000, help="synthetic training images rendered")
    pm.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    pm.add_argument("--ship", action="store_true", help="afterwards copy OUT/model into the package (fp16) as the "
                    "model behind --model mini")
    pm.add_argument("--quiet", action="store_true")
    return parser


def cmd_pretrain_mini(args) -> int:
    import shlex

    mini = load_tool("tools/pretrain_mini.py", "pretrain-mini")
    if (args.steps is not None and args.steps < 1) or (args.minutes is not None and args.minutes <= 0):
        raise ValueError("--steps / --minutes must be positive")
    command = "sd4match " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    metrics = mini.pretrain_mini(args.out, steps=args.steps, minutes=args.minutes, seed=args.seed, device=args.device,
                                 resume=args.resume, progress=not args.quiet, pool_size=args.pool_size,
                                 command=command)["metrics"]
    if args.ship:
        print(f"shipped to {mini.ship(args.out / 'model')}")
    print(json.dumps({"model": str(args.out / "model"), **{k: v for k, v in metrics.items() if k != "selection"},
                      "selection": {k: metrics["selection"][k] for k in ("layer", "timestep", "pck")}}))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import EvalSettings, headline, run_evaluation

    metrics = run_evaluation(from_args(EvalSettings, args), args.out, progress=not args.quiet, resume=args.resume,
                             shard_size=args.shard_size)
    print(headline(metrics).round(2).to_string())
    print(f"wrote {args.out / 'predictions.csv'} and {args.out / 'metrics.json'}")
    return 0


def cmd_extract(args) -> int:
    import torch

    from .cache import atomic_save_tensors
    from .checks import check_device, check_img_size, check_positive, check_writable_file
    from .conditioning import check_prompt_spec, make_conditioning
    from .data.images import load_rgb
    from .features import FeatureExtractor
    from .models import load_sd
    from .report import provenance

    # cheap checks first, before the model loads
    check_positive("--batch-size", args.batch_size)
    check_positive("--ensemble", args.ensemble)
    check_img_size(args.img_size)
    check_device(args.device)
    check_writable_file(args.out)
    check_prompt_spec(args.prompt)
    images = [load_rgb(p) for p in args.images]
    sd = load_sd(args.model, device=args.device, precision=args.precision, compile=args.compile)
    conditioning = make_conditioning(sd, args.prompt)
    if conditioning.pair_dependent and len(images) != 2:
        raise ValueError("a CPM prompt conditions on an image pair: give exactly two --images (source, target)")
    category = SimpleNamespace(category=args.category, src_image=images[0], trg_image=images[-1])  # a pair's fields
    text = prompt_text(args.prompt, args.category) if args.prompt in FIXED_PROMPTS else f"learned:{args.prompt}"
    timestep = sd.recommended["timestep"] if args.timestep is None else args.timestep
    fx = FeatureExtractor(sd, layers=args.layers, timestep=timestep, ensemble=args.ensemble, latent=args.latent,
                          img_size=args.img_size, seed=args.seed, batch_size=args.batch_size)
    feats = fx(images, conditioning(category), names=[str(p) for p in args.images])
    names = [p.stem for p in args.images]
    if len(set(names)) != len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    tensors = {f"{n}/up{l}": feats[l][i].to(torch.float32) for i, n in enumerate(names) for l in fx.layers}
    meta = {"images": json.dumps({n: str(p) for n, p in zip(names, args.images)}), "prompt": args.prompt,
            "prompt_text": text, "settings": fx.settings(), "model": sd.identity, "provenance": provenance()}
    atomic_save_tensors(args.out, tensors, meta)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    print(f"wrote {len(tensors)} feature maps to {args.out}: {shapes}")
    return 0


def cmd_train(args) -> int:
    import os

    from .train import TrainSettings, train

    settings = from_args(TrainSettings, args)
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    summary = train(settings, args.out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    if summary.get("processes", 1) == 1 or os.environ.get("RANK", "0") == "0":  # the main process reports
        print(f"steps {summary['steps']}/{summary['total_steps']} (global batch {summary['global_batch']}); "
              f"val nn-PCK@0.1 before {summary['val_pck_before']:.2f}, best {summary['best_val_pck']:.2f} "
              f"at step {summary['best_step']}; prompt: {args.out / 'prompt_best.safetensors'}")
    return 0


def cmd_import_official(args) -> int:
    from .conditioning import import_official
    from .models import load_sd

    path = import_official(args.kind, args.file, args.out, load_sd(args.model) if args.model else None,
                           dino=args.dino, features=args.cpm_features, check_model=not args.no_check_model)
    print(f"wrote {path} ({args.kind} from {args.file}, model {args.model or 'unknown: not checked (no --model)'})")
    return 0


def load_tool(relpath: str, command: str):
    """A script of the repository checkout (not in the package) as a module, e.g. ``benchmarks/bench.py``.

    Raises:
        FileNotFoundError: the file is not there (an install without the checkout); names the command and file.
    """
    import importlib.util

    path = Path(__file__).resolve().parents[1] / relpath
    if not path.is_file():
        raise FileNotFoundError(f"`sd4match {command}` needs the repository checkout ({relpath}): no {path}")
    name = "sd4match_" + path.stem
    if name not in sys.modules:  # one module object per process (dataclasses and pickles look it up by name)
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_bench():
    """The speed harness, ``benchmarks/bench.py``."""
    return load_tool("benchmarks/bench.py", "bench")


def cmd_bench(args) -> int:
    from .cache import atomic_write_json, atomic_write_text
    from .checks import check_device

    check_device(args.device)
    bench = load_bench()
    ints = lambda text: tuple(int(x) for x in text.split(","))  # noqa: E731
    gpu = args.device.startswith("cuda")
    fast_path = {"channels_last": False if args.no_channels_last else None, "compile": args.compile}
    if args.quick:
        fast = args.precisions or "auto"
        if fast not in PRECISION_CHOICES:
            raise ValueError(f"--quick takes one --precisions value of {list(PRECISION_CHOICES)}, got {fast!r}")
        sizes = ints(args.sizes) if args.sizes else (512, 768)
        strategy_size = min(sizes) if args.strategy_size is None else (args.strategy_size or None)
        result = bench.run_quick(args.model, args.device, fast, sizes, ints(args.ensembles), strategy_size,
                                 **fast_path)
    else:
        precisions = args.precisions.split(",") if args.precisions else (("bf16", "fp16") if gpu else ("bf16",))
        precisions = tuple(dict.fromkeys(resolve_precision(p, args.device) for p in precisions))
        sizes = ints(args.sizes) if args.sizes else (768, 512)
        n_images = 16 if args.throughput_images is None else args.throughput_images
        result = bench.run_bench(args.model, args.device, precisions, sizes, ints(args.ensembles), args.repeats or 3,
                                 train=not args.no_train, train_batch=3, throughput_images=n_images, **fast_path)
    title = args.title or ("GPU" if gpu else "CPU") + (" (quick)" if args.quick else "")
    markdown = bench.render_markdown(result, title)
    atomic_write_json(args.out / "bench.json", result)
    atomic_write_text(args.out / "bench.md", markdown)
    print(markdown)
    return 0


def cmd_synthetic(args) -> int:
    from .data import ensure_synthetic

    extra = {} if args.test_pairs is None else {"test_pairs": args.test_pairs}
    for name, root in ensure_synthetic(args.out, seed=args.seed, **extra).items():
        print(f"{name}: {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        set_threads(getattr(args, "threads", None))
        if getattr(args, "precision", None) == "auto":  # recorded as what it resolved to
            args.precision = resolve_precision(args.precision, args.device, args.model)
        return globals()["cmd_" + args.command.replace("-", "_")](args)
    except (DatasetFormatError, ModelNotAvailableError, ValueError, FileNotFoundError, FolderLockedError) as e:
        print(f"sd4match {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
