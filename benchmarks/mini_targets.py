"""What the trained embedded model ``mini`` shows, measured on held-out synthetic pairs.

    python benchmarks/mini_targets.py [--model mini] [--test-pairs 240] [--train-steps 300] [--out benchmarks/mini]

On a synthetic SPair-71k-layout test split (seed 0, never seen in pre-training: those images come from their own
random stream), with the paper's test protocol (kernel-softmax, PCK@0.1 per image, E = 8) at the model's
recommended read-out layer and timestep, it measures:

- zero-shot with the text prompt ``"a photo of a {category}"`` and the empty prompt;
- three baselines on the same pairs: the same architecture with **random weights**, **raw colours** (the image's
  pixels average-pooled to the read-out grid, matched like features) and **copy position** (predict the source
  keypoint's own position);
- learned **Single**, **Class** and **CPM** prompts (``--train-steps`` each on the synthetic training split);
- a layer × timestep table of zero-shot PCK (E = 2) on the validation split.

Writes ``OUT/mini_targets.json`` (every number, the settings, versions) and ``OUT/mini_targets.md`` (the tables
the README quotes).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from sd4match_utils.cache import atomic_write_json, atomic_write_text
from sd4match_utils.conditioning import make_conditioning
from sd4match_utils.data import ensure_synthetic, load_dataset
from sd4match_utils.evaluate import predict
from sd4match_utils.report import provenance
from sd4match_utils.features import FeatureExtractor, feature_shapes, preprocess
from sd4match_utils.metrics import pck_records
from sd4match_utils.models import SDModel, load_sd
from sd4match_utils.train import TrainSettings, train
from sd4match_utils.cli import load_tool

import sd4match_utils.dino  # noqa: E402,F401 - every module the run uses, loaded before it starts
import sd4match_utils.loss  # noqa: E402,F401

mini = load_tool("tools/pretrain_mini.py", "pretrain-mini")  # the architecture (for the random-weights twin)


def headline(df: pd.DataFrame, img_size: int) -> float:
    """PCK@0.1, per image, resized space, all categories."""
    rec = [r for r in pck_records(df, alphas=(0.1,), spaces=("resized",), img_size=img_size, by_category=False)
           if r["averaging"] == "per_image"]
    return round(rec[0]["pck"], 2)


class ColourFeatures:
    """The raw-colour baseline as a feature extractor: pixels in [-1, 1], minus their image mean, average-pooled
    to the ``(h, w)`` grid of the read-out layer. Returns ``{layer: (B, 3, h, w)}``."""

    def __init__(self, img_size: int, grid: tuple[int, int], layer: int):
        self.img_size, self.grid, self.layer = img_size, grid, layer

    def __call__(self, images, cond):
        x = torch.stack([preprocess(im, self.img_size) for im in images])
        x = x - x.mean(dim=(2, 3), keepdim=True)
        return {self.layer: F.adaptive_avg_pool2d(x, self.grid)}


def copy_position(dataset) -> pd.DataFrame:
    """Predictions that copy each source keypoint's position (resized space)."""
    from sd4match_utils.evaluate import _pair_rows

    rows = []
    for sample in dataset:
        rows += _pair_rows(sample, {"kernel_softmax": torch.as_tensor(sample.src_kps_r)})
    return pd.DataFrame(rows)


def random_twin(sd: SDModel, seed: int) -> SDModel:
    """The same architecture with random weights (the pre-training's starting point)."""
    parts = mini.build_mini_components(seed)
    parts.pop("dino")
    return SDModel(**parts, identity={"model": "mini-random", "source": "embedded", "fingerprint": f"seed{seed}"},
                   recommended=sd.recommended)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mini")
    p.add_argument("--data", type=Path, default=None, help="synthetic data folder (default: a temporary one)")
    p.add_argument("--test-pairs", type=int, default=240)
    p.add_argument("--ensemble", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-sweep", action="store_true", help="skip the layer × timestep table")
    p.add_argument("--out", type=Path, default=Path("benchmarks/mini"))
    p.add_argument("--runs", type=Path, default=Path("runs/mini_targets"), help="folder of the trained prompts")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    tmp = tempfile.TemporaryDirectory()
    roots = ensure_synthetic(args.data or tmp.name, seed=args.seed, test_pairs=args.test_pairs)
    sd = load_sd(args.model)
    size, layer, t = sd.native_img_size, sd.recommended["layer"], sd.recommended["timestep"]
    test = load_dataset("spair", roots["spair"], "test", img_size=size)
    results: list[dict] = []

    def record(name: str, df: pd.DataFrame, **extra) -> None:
        results.append({"method": name, "pck": headline(df, size), "pairs": int(df["pair_id"].nunique()), **extra})
        print(f"{name:28s} PCK@0.1 = {results[-1]['pck']:6.2f}  ({time.time() - start:.0f} s)", flush=True)

    def zero_shot(model: SDModel, prompt: str, ensemble: int = args.ensemble, dataset=test, lay=layer, ts=t):
        ex = FeatureExtractor(model, layers=(lay,), timestep=ts, ensemble=ensemble, img_size=size, seed=args.seed)
        return predict(dataset, ex, make_conditioning(model, prompt), ["kernel_softmax"], layer=lay, progress=False)

    record("text prompt", zero_shot(sd, "text"))
    record("empty prompt", zero_shot(sd, "empty"))
    record("random weights (text)", zero_shot(random_twin(sd, args.seed), "text"))
    grid = tuple(feature_shapes(sd, size)[layer][1:])
    record("raw colours", predict(test, ColourFeatures(size, grid, layer), make_conditioning(sd, "empty"),
                                  ["kernel_softmax"], layer=layer, progress=False))
    record("copy position", copy_position(test))

    runs = args.runs
    for kind in ("single", "class", "cpm"):
        s = TrainSettings(prompt_type=kind, dataset="spair", data_root=str(roots["spair"]), model=args.model,
                          max_steps=args.train_steps, seed=args.seed, layer=layer, val_timestep=t,
                          save_every=max(args.train_steps // 4, 1))
        summary = train(s, runs / kind, sd=sd, progress=False, overwrite=True)
        record(f"learned {kind}", zero_shot(sd, str(runs / kind / "prompt_best.safetensors")),
               val_before=summary.get("val_pck_before"), val_best=summary.get("best_val_pck"))

    sweep = []
    if not args.no_sweep:
        val = load_dataset("spair", roots["spair"], "val", img_size=size)
        for ts in (25, 50, 100, 200, 400):
            fx = FeatureExtractor(sd, layers=(0, 1, 2, 3), timestep=ts, ensemble=2, img_size=size, seed=args.seed)
            preds = predict(val, fx, make_conditioning(sd, "text"), ["kernel_softmax"], layer=(0, 1, 2, 3),
                            progress=False)  # every up-block from one UNet pass per image
            for lay, df in preds.groupby("layer"):
                sweep.append({"layer": int(lay), "timestep": ts, "pck": headline(df, size)})
        print(pd.DataFrame(sweep).pivot(index="layer", columns="timestep", values="pck"), flush=True)

    by = {r["method"]: r["pck"] for r in results}
    text = by["text prompt"]
    targets = [
        ("zero-shot text prompt ≥ 40", text >= 40, text),
        ("≥ 20 points above raw colours", text - by["raw colours"] >= 20, round(text - by["raw colours"], 2)),
        ("≥ 20 points above copy position", text - by["copy position"] >= 20, round(text - by["copy position"], 2)),
        ("≥ 30 points above random weights", text - by["random weights (text)"] >= 30,
         round(text - by["random weights (text)"], 2)),
        ("learned Single ≥ 3 points above text", by["learned single"] - text >= 3,
         round(by["learned single"] - text, 2)),
    ]
    out = {"model": sd.identity, "recommended": sd.recommended, "img_size": size, "ensemble": args.ensemble,
           "matcher": "kernel_softmax", "metric": "PCK@0.1 per image (resized space), SPair-layout synthetic test",
           "test_pairs": len(test), "train_steps": args.train_steps, "seed": args.seed, "results": results,
           "targets": [{"target": n, "met": bool(ok), "value": v} for n, ok, v in targets], "sweep": sweep,
           "seconds": round(time.time() - start, 1), "threads": torch.get_num_threads(),
           "command": "python " + " ".join(sys.argv), "provenance": provenance(), "machine": platform.platform()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "mini_targets.json", out)
    md = [f"### `{args.model}` on {len(test)} held-out synthetic pairs (layer {layer}, t = {t}, E = {args.ensemble}, "
          f"kernel-softmax, PCK@0.1 per image)", "", pd.DataFrame(results).to_markdown(index=False), "",
          pd.DataFrame(out["targets"]).to_markdown(index=False)]
    if sweep:
        md += ["", "Zero-shot PCK@0.1 (text prompt, E = 2, validation split) by layer (rows) and timestep:", "",
               pd.DataFrame(sweep).pivot(index="layer", columns="timestep", values="pck").to_markdown()]
    atomic_write_text(args.out / "mini_targets.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
