"""Which UNet read-out matches best? The layer × timestep × prompt study of notebook 01.

SD4Match reads ``up_blocks[1]`` at ``t = 50`` (SPEC §2). This module measures that choice against the other
up-blocks and timesteps on a handful of pairs, without re-running anything it can reuse:

* every image goes through the VAE once (its latent is shared by all timesteps and prompts);
* for each timestep × prompt, each image goes through the UNet once for *all* requested up-blocks (the UNet
  stops after the deepest one), and its features are reused for every pair the image is in;
* every up-block's maps are matched with each requested matcher, and PCK is computed in the paper's resized
  space with both averagings.

It also holds the small naming and selection helpers the notebook uses (file-name tags, a category-balanced
choice of pairs) and the per-layer similarity maps of one keypoint.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .cache import tensor_key
from .conditioning import BoundConditioning, FixedPrompt
from .features import FeatureExtractor, image_key
from .matching import cosine_maps, match_all, pixel_to_grid, sample_descriptors
from .metrics import pck_records

__all__ = [
    "SWEEP_COLUMNS",
    "SWEEP_MATCHERS",
    "model_tag",
    "dataset_tag",
    "output_name",
    "spread_pairs",
    "category_images",
    "similarity_maps",
    "sweep_predictions",
    "sweep_pck",
]

#: Columns of the tidy sweep table returned by :func:`sweep_pck`.
SWEEP_COLUMNS = ("layer", "timestep", "prompt", "matcher", "averaging", "alpha", "pck", "n_pairs")
#: The paper's matcher and the plain argmax.
SWEEP_MATCHERS = ("kernel_softmax", "nn")


# --------------------------------------------------------------------------------------------------------------
# names and selections
# --------------------------------------------------------------------------------------------------------------


def model_tag(model: str) -> str:
    """A short file-system-safe tag for a model: ``"tiny"`` → ``"tiny"``; a hub id ``"owner/name"`` →
    ``"owner--name"``; a local folder → its folder name. Other characters outside ``[A-Za-z0-9._-]`` become
    ``-``."""
    model = str(model).strip()
    if not model:
        raise ValueError("model must not be empty")
    path = Path(model).expanduser()
    if path.is_dir() or model.startswith((".", "/", "~")):
        model = path.resolve().name or "model"
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", model.replace("/", "--")).strip("-.")
    return tag or "model"


def dataset_tag(dataset: str, synthetic: bool) -> str:
    """``"spair"`` or, for the embedded generated data, ``"spair-synthetic"`` (so a figure made on generated
    images is never mistaken for one made on the benchmark)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(dataset).strip().lower()).strip("-.")
    if not name:
        raise ValueError("dataset must not be empty")
    return f"{name}-synthetic" if synthetic else name


def output_name(prefix: str, what: str, model: str, dataset: str, synthetic: bool, suffix: str = ".png") -> str:
    """``<prefix>_<what>_<model-tag>_<dataset-tag><suffix>``, e.g. ``01_pca_tiny_spair-synthetic.png``."""
    return f"{prefix}_{what}_{model_tag(model)}_{dataset_tag(dataset, synthetic)}{suffix}"


def spread_pairs(dataset, n_pairs: int) -> list[int]:
    """Indices of ``n_pairs`` pairs spread over the categories: round-robin over ``dataset.categories`` (sorted),
    taking each category's pairs in file order. Deterministic; opens no image.

    Returns:
        ``min(n_pairs, len(dataset))`` distinct indices, in selection order.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    by_cat: dict[str, list[int]] = {}
    for i in range(len(dataset)):
        by_cat.setdefault(dataset.category_of(i), []).append(i)
    order = [c for c in getattr(dataset, "categories", []) if c in by_cat] + sorted(
        c for c in by_cat if c not in getattr(dataset, "categories", []))
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n_pairs, len(dataset)):
        for c in order:
            if depth < len(by_cat[c]) and len(picked) < n_pairs:
                picked.append(by_cat[c][depth])
        depth += 1
    return picked


def category_images(dataset, category: str, n: int) -> list:
    """Up to ``n`` distinct images (PIL) of one category, taken from its pairs in file order (source first)."""
    seen: set[Path] = set()
    images = []
    for i in range(len(dataset)):
        if dataset.category_of(i) != category:
            continue
        sample = dataset[i]
        for path, image in ((sample.src_path, sample.src_image), (sample.trg_path, sample.trg_image)):
            if path not in seen and len(images) < n:
                seen.add(path)
                images.append(image)
        if len(images) >= n:
            break
    if not images:
        raise ValueError(f"no pair of category {category!r} in {dataset!r}")
    return images


# --------------------------------------------------------------------------------------------------------------
# one keypoint, every layer
# --------------------------------------------------------------------------------------------------------------


def similarity_maps(
    src_feats: Mapping[int, torch.Tensor],
    trg_feats: Mapping[int, torch.Tensor],
    src_xy,
    img_size: int,
    matcher: str = "kernel_softmax",
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Cosine map of one source keypoint against the target, and the matcher's prediction, at each layer.

    Args:
        src_feats, trg_feats: ``{layer: (C_l, h_l, w_l)}`` feature maps of the source and target images.
        src_xy: ``(2,)`` source keypoint ``(x, y)`` in ``img_size`` pixels.
        img_size: side of the resized images.
        matcher: a name from :data:`~sd4match_utils.matching.MATCHERS`.

    Returns:
        ``({layer: (h_l, w_l) float32 cosine map}, {layer: (2,) predicted (x, y) in img_size pixels})`` on CPU.
    """
    xy = torch.as_tensor(src_xy, dtype=torch.float32).reshape(1, 2)
    sims, preds = {}, {}
    for l, src in src_feats.items():
        trg = trg_feats[l]
        if src.ndim != 3 or trg.ndim != 3:
            raise ValueError(f"layer {l}: feature maps must be (C, h, w), got {tuple(src.shape)}, {tuple(trg.shape)}")
        grid = pixel_to_grid(xy, img_size, tuple(src.shape[1:]))
        desc = sample_descriptors(src, grid.to(src.device))
        sims[l] = cosine_maps(desc, trg)[0].cpu()
        preds[l] = match_all(src, trg, xy.to(src.device), img_size, (matcher,))[matcher][0].cpu()
    return sims, preds


# --------------------------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------------------------


def _check_sweep_args(layers, timesteps, prompts) -> None:
    for name, values in (("layers", layers), ("timesteps", timesteps), ("prompts", prompts)):
        if len(values) == 0:
            raise ValueError(f"{name} must not be empty")
        if len(set(values)) != len(values):
            raise ValueError(f"{name} has duplicates: {list(values)}")


def _match_rows(sample, src: dict, trg: dict, layers, matchers, timestep: int, prompt: str) -> list[dict]:
    """Predictions-table rows of one pair at every layer, given its ``{layer: (C, h, w)}`` source / target maps."""
    kps = torch.as_tensor(sample.src_kps_r, dtype=torch.float32)
    rows = []
    for l in layers:
        preds = match_all(src[l], trg[l], kps.to(src[l].device), sample.img_size, tuple(matchers))
        for m, p in preds.items():
            p = p.detach().cpu().double().numpy()
            for k in range(sample.n_kps):
                rows.append({
                    "layer": l, "timestep": timestep, "prompt": prompt, "matcher": m,
                    "pair_id": sample.pair_id, "category": sample.category, "kp_index": k,
                    "src_x": float(sample.src_kps_r[k, 0]), "src_y": float(sample.src_kps_r[k, 1]),
                    "gt_x": float(sample.trg_kps_r[k, 0]), "gt_y": float(sample.trg_kps_r[k, 1]),
                    "thr": float(sample.thr), "pred_x": float(p[k, 0]), "pred_y": float(p[k, 1]),
                })
    return rows


def sweep_predictions(
    sd,
    dataset,
    pair_indices: Sequence[int],
    layers: Sequence[int] = (0, 1, 2, 3),
    timesteps: Sequence[int] = (50,),
    prompts: Sequence[str] = ("empty", "text"),
    ensemble: int = 1,
    seed: int = 0,
    matchers: Sequence[str] = SWEEP_MATCHERS,
    latent: str = "sample",
    batch_size: int = 8,
    memory_cache: int = 64,
    progress: bool = False,
) -> pd.DataFrame:
    """Predict every keypoint of the chosen pairs for each layer × timestep × prompt × matcher.

    Args:
        sd: a loaded :class:`~sd4match_utils.models.SDModel`.
        dataset: a :class:`~sd4match_utils.data.PairDataset`; its ``img_size`` is the feature resolution.
        pair_indices: which pairs (e.g. :func:`spread_pairs`).
        layers: up-blocks to compare, subset of ``(0, 1, 2, 3)``; all come from one UNet pass per image.
        timesteps: diffusion steps ``t``.
        prompts: fixed prompts, ``"empty"`` and/or ``"text"`` (SPEC §3).
        ensemble: noise copies averaged per image (8 in the paper's test protocol).
        seed: feature seed (latent sample and noise, per image).
        matchers: names from :data:`~sd4match_utils.matching.MATCHERS`.
        latent: ``"sample"`` (paper) or ``"mean"`` of the VAE posterior.
        batch_size: rows (images × ensemble) per UNet call; pairs are matched once a batch of their missing
            images has been extracted, so consecutive pairs share UNet calls.
        memory_cache: images whose features are kept in memory within one timestep × prompt (beyond those of
            the batch being matched).
        progress: show a tqdm bar (``TQDM_DISABLE=1`` silences it anyway).

    Returns:
        One row per layer × timestep × prompt × matcher × keypoint with the columns ``layer, timestep, prompt,
        matcher, pair_id, category, kp_index, src_x, src_y, gt_x, gt_y, thr, pred_x, pred_y`` (coordinates and
        ``thr`` in ``img_size`` pixels, the predictions-table convention of :mod:`~sd4match_utils.metrics`).
    """
    layers = tuple(int(l) for l in layers)
    timesteps = tuple(int(t) for t in timesteps)
    prompts = tuple(prompts)
    _check_sweep_args(layers, timesteps, prompts)
    img_size = dataset.img_size
    providers = {p: BoundConditioning(sd, FixedPrompt(p)) for p in prompts}
    common = dict(layers=layers, ensemble=ensemble, latent=latent, img_size=img_size, seed=seed, batch_size=batch_size)
    extractors = {t: FeatureExtractor(sd, timestep=t, **common) for t in timesteps}
    vae_side = extractors[timesteps[0]]  # its latent store is shared: latents do not depend on t or the prompt
    rows: list[dict] = []
    bar = tqdm(total=len(timesteps) * len(prompts) * len(pair_indices), desc="sweep", unit="pair",
               disable=not progress)
    for t in timesteps:
        fx = extractors[t]
        for prompt in prompts:
            lru: OrderedDict = OrderedDict()  # (image key, conditioning key) → {layer: (C, h, w)}
            pending: list[tuple] = []  # pairs waiting for their features: (sample, [src key, trg key])
            need: OrderedDict = OrderedDict()  # feature key → (image, conditioning (1, 77, D))
            for pos, i in enumerate(pair_indices):
                sample = dataset[i]
                cond = providers[prompt](sample)
                ckey = tensor_key(cond)
                images = (sample.src_image, sample.trg_image)
                keys = [(image_key(im), ckey) for im in images]
                for key, image in zip(keys, images):
                    if key not in lru and key not in need:
                        need[key] = (image, cond)
                pending.append((sample, keys))
                # extract once a UNet batch is full (or at the end), then match the pairs that waited for it
                if len(need) * ensemble < batch_size and pos < len(pair_indices) - 1:
                    continue
                if need:
                    need_keys = list(need)
                    z0 = vae_side.latents([need[k][0] for k in need_keys])
                    conds = torch.cat([need[k][1] for k in need_keys])  # (B, 77, D): one prompt per image
                    feats = fx.features_from_latents(z0, conds, [k[0] for k in need_keys])
                    for n, key in enumerate(need_keys):
                        lru[key] = {l: feats[l][n] for l in layers}
                    need.clear()
                for waiting, (src_key, trg_key) in pending:
                    src, trg = lru[src_key], lru[trg_key]
                    lru.move_to_end(src_key)
                    lru.move_to_end(trg_key)
                    rows.extend(_match_rows(waiting, src, trg, layers, matchers, t, prompt))
                    bar.update(1)
                pending.clear()
                while len(lru) > max(int(memory_cache), 2):
                    lru.popitem(last=False)
    bar.close()
    columns = ["layer", "timestep", "prompt", "matcher", "pair_id", "category", "kp_index", "src_x", "src_y",
               "gt_x", "gt_y", "thr", "pred_x", "pred_y"]
    return pd.DataFrame(rows, columns=columns)


def sweep_pck(predictions: pd.DataFrame, img_size: int, alphas: Sequence[float] = (0.1,)) -> pd.DataFrame:
    """PCK of each layer × timestep × prompt × matcher in the paper's resized space, both averagings.

    Args:
        predictions: output of :func:`sweep_predictions`.
        img_size: side of the resized images (for the ground-truth clamp of SPEC §7).
        alphas: PCK thresholds α.

    Returns:
        Tidy table with the columns :data:`SWEEP_COLUMNS` (``pck`` in percent, ``n_pairs`` the pairs averaged),
        sorted by prompt, matcher, averaging, alpha, timestep, layer.
    """
    records = []
    if len(predictions):
        for (layer, t, prompt), sub in predictions.groupby(["layer", "timestep", "prompt"], sort=True):
            n_pairs = int(sub.drop_duplicates(["category", "pair_id"]).shape[0])
            for r in pck_records(sub, alphas=alphas, spaces=("resized",), img_size=img_size, by_category=False):
                records.append({"layer": int(layer), "timestep": int(t), "prompt": prompt, "matcher": r["matcher"],
                                "averaging": r["averaging"], "alpha": float(r["alpha"]), "pck": float(r["pck"]),
                                "n_pairs": n_pairs})
    table = pd.DataFrame(records, columns=list(SWEEP_COLUMNS))
    return table.sort_values(["prompt", "matcher", "averaging", "alpha", "timestep", "layer"],
                             ignore_index=True)
