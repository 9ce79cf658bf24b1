"""Plots drawn on images: PCA colourings of feature maps, similarity heat-maps, keypoint matches, the explorer's
static view, the best and worst pairs of a benchmark run, where two prompts' predictions differ, and the PNGs the
explorer and annotator widgets show (drawn with PIL, fast enough to redraw on every click)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from ..benchmark import BENCHMARK_NAMES, load_predictions
from ..data import load_dataset
from ..explore import ClickResult
from ..metrics import correct_rows
from .base import GT, OK, WRONG, as_points, axes_grid, finish, frame, resized, show_pair, to_numpy, upsample_map


def pca_rgb_joint(feats: Sequence) -> list[np.ndarray]:
    """Colour feature maps with their first 3 principal components in one shared basis, each min-max scaled over
    all maps together (one colour = one feature direction in every map); eigenvector signs are fixed (largest entry
    positive). Components with a range below 1e-6 of the first one's, or missing (``C < 3``), are a flat 0.5.

    Shape:
        - feats: ``M`` maps :math:`(C, h_i, w_i)` (tensors or arrays)
        - Output: ``M`` float32 arrays :math:`(h_i, w_i, 3)`
    """
    if len(feats) == 0:
        raise ValueError("pca_rgb_joint needs at least one feature map")
    maps = [to_numpy(f) for f in feats]
    for i, m in enumerate(maps):
        if m.ndim != 3:
            raise ValueError(f"feats[{i}] must have shape (C, h, w), got {m.shape}")
        if min(m.shape) < 1:
            raise ValueError(f"feats[{i}] must be non-empty, got {m.shape}")
    c = maps[0].shape[0]
    if any(m.shape[0] != c for m in maps):
        raise ValueError(f"all maps must have the same number of channels, got {[m.shape[0] for m in maps]}")
    rows = np.concatenate([m.reshape(c, -1).T for m in maps], axis=0)  # (Σ h·w, C)
    if not np.all(np.isfinite(rows)):
        raise ValueError("feature maps contain NaN or infinite values")
    rows = rows - rows.mean(axis=0, keepdims=True)
    k = min(3, c)
    vecs = np.linalg.eigh(rows.T @ rows)[1][:, ::-1][:, :k]  # eigh: ascending eigenvalues
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(k)])
    proj = rows @ (vecs * np.where(signs == 0, 1.0, signs))  # (Σ h·w, k)
    lo, span = proj.min(axis=0), np.ptp(proj, axis=0)
    rgb = np.full((rows.shape[0], 3), 0.5)
    for j in range(k):
        if span[j] > max(1e-6 * span[0], 1e-12):
            rgb[:, j] = (proj[:, j] - lo[j]) / span[j]
    rgb = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    parts = np.split(rgb, np.cumsum([m.shape[1] * m.shape[2] for m in maps])[:-1])
    return [part.reshape(m.shape[1], m.shape[2], 3) for part, m in zip(parts, maps)]


def pca_rgb(feat) -> np.ndarray:
    """First 3 principal components of one feature map as colours in ``[0, 1]`` (see :func:`pca_rgb_joint`).

    Shape:
        - feat: :math:`(C, h, w)`
        - Output: :math:`(h, w, 3)`, float32
    """
    return pca_rgb_joint([feat])[0]


def plot_pca(images: Sequence, feats_by_layer: Mapping[int, torch.Tensor], img_size: int | None = None,
             joint: bool = True, layer_names: Mapping[int, str] | None = None, title: str | None = None, axes=None,
             save: str | Path | None = None) -> Figure:
    """Grid of PCA colourings: one row per image, columns = the image (resized to ``img_size`` if given), then one
    panel per layer (``joint``: one PCA basis per layer; ``layer_names``: column titles; ``axes``: ``B · (1 + L)``).

    Shape:
        - images: ``B`` PIL images; feats_by_layer: ``{layer: (B, C_l, h_l, w_l)}``
    """
    layers, b = list(feats_by_layer), len(images)
    if b == 0 or not layers:
        raise ValueError("plot_pca needs at least one image and one layer")
    for l in layers:
        if feats_by_layer[l].shape[0] != b:
            raise ValueError(f"layer {l} has features for {feats_by_layer[l].shape[0]} images, expected {b}")
    fig, grid = axes_grid(axes, b, 1 + len(layers), "plot_pca")
    grid[0, 0].set_title("image", fontsize=9)
    for i, image in enumerate(images):
        grid[i, 0].imshow(resized(image, img_size))
    for j, l in enumerate(layers, start=1):
        maps = list(feats_by_layer[l])
        for ax, colours in zip(grid[:, j], pca_rgb_joint(maps) if joint else [pca_rgb(m) for m in maps]):
            ax.imshow(colours, interpolation="nearest")
        c, h, w = tuple(feats_by_layer[l].shape[1:])
        grid[0, j].set_title((layer_names or {}).get(l, f"up_blocks[{l}]  {c}×{h}×{w}"), fontsize=9)
    for ax in grid.ravel():
        ax.set(xticks=[], yticks=[])
    return finish(fig, save, title, own=axes is None)


def plot_similarity(src_img, trg_img, src_xy, sim_map, pred_xy=None, gt_xy=None, img_size: int | None = None,
                    cmap: str = "jet", alpha: float = 0.55, title: str | None = None, axes=None,
                    save: str | Path | None = None) -> Figure:
    """The source with its keypoint, then the target under each similarity heat-map (upsampled bilinearly, align
    corners) with the prediction (white ×) and the ground truth.

    Args:
        sim_map, pred_xy: one cosine map and prediction, or ``{label: ...}`` of each (one target panel per map).
        img_size: display size of both images; default the source image's width (images should then be square).
        axes: ``1 + M`` axes (``M`` maps); default a new figure with one row.

    Shape:
        - src_xy, pred_xy, gt_xy: :math:`(2)` in ``img_size`` pixels; sim_map: :math:`(h, w)` each
    """
    maps = dict(sim_map) if isinstance(sim_map, Mapping) else {"similarity": sim_map}
    if not maps:
        raise ValueError("plot_similarity needs at least one similarity map")
    preds = dict(pred_xy) if isinstance(pred_xy, Mapping) else dict.fromkeys(maps, pred_xy)
    src = resized(src_img, img_size)
    size = src.shape[1] if img_size is None else int(img_size)
    trg = resized(trg_img, size)
    fig, grid = axes_grid(axes, 1, 1 + len(maps), "plot_similarity")
    flat = list(grid.ravel())
    dot = dict(s=60, c=GT, edgecolors="black", linewidths=1.0, zorder=3)
    flat[0].imshow(src)
    flat[0].scatter(*as_points(src_xy, "src_xy")[:1].T, **dot)
    flat[0].set_title("source keypoint", fontsize=9)
    for ax, (label, sim) in zip(flat[1:], maps.items()):
        ax.imshow(trg)
        ax.imshow(upsample_map(sim, size), cmap=cmap, alpha=alpha, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        if gt_xy is not None:
            ax.scatter(*as_points(gt_xy, "gt_xy")[:1].T, **dot, label="ground truth")
        if preds.get(label) is not None:
            ax.scatter(*as_points(preds[label], "pred_xy")[:1].T, s=70, marker="x", c="white", linewidths=2.0,
                       zorder=4, label="prediction")
        ax.set_title(str(label), fontsize=9)
    for ax in flat:
        frame(ax, size, size)
    if gt_xy is not None or any(p is not None for p in preds.values()):
        flat[-1].legend(loc="lower right", fontsize=7, framealpha=0.7)
    return finish(fig, save, title, own=axes is None)


def plot_matches(sample, pred, correct, show_gt: bool = True, title: str | None = None, ax: Axes | None = None,
                 save: str | Path | None = None) -> Figure:
    """Source and target of a :class:`~sd4match_utils.data.PairSample` side by side, a line from each source keypoint
    to its prediction, green when correct (lines ``gid="match"``), hollow yellow circles at the ground truth.

    Shape:
        - pred: :math:`(N, 2)` in ``img_size`` pixels; correct: :math:`(N)`, bool
    """
    s = int(sample.img_size)
    src_kps, pred = as_points(sample.src_kps_r, "sample.src_kps_r"), as_points(pred, "pred")
    correct = to_numpy(correct, bool).reshape(-1)
    if not (src_kps.shape[0] == pred.shape[0] == correct.shape[0]):
        raise ValueError(f"need as many predictions and flags as keypoints: {src_kps.shape[0]} keypoints, "
                         f"{pred.shape[0]} predictions, {correct.shape[0]} flags")
    own = ax is None
    if own:
        ax = plt.subplots(figsize=(7.0, 3.6))[1]
    show_pair(ax, sample, s)
    colours = np.where(correct, OK, WRONG)
    for (x0, y0), (x1, y1), colour in zip(src_kps, pred, colours):
        ax.plot([x0, x1 + s], [y0, y1], color=colour, linewidth=1.2, alpha=0.9, gid="match")
    ax.scatter(src_kps[:, 0], src_kps[:, 1], s=18, c="white", edgecolors="black", linewidths=0.6, zorder=3)
    ax.scatter(pred[:, 0] + s, pred[:, 1], s=22, c=colours, edgecolors="black", linewidths=0.6, zorder=4)
    if show_gt:
        gt = as_points(sample.trg_kps_r, "sample.trg_kps_r")
        ax.scatter(gt[:, 0] + s, gt[:, 1], s=40, facecolors="none", edgecolors=GT, linewidths=1.2, zorder=3)
    ax.set_title(title if title is not None else f"{int(correct.sum())}/{correct.size} correct", fontsize=9)
    return finish(ax.figure, save, own=own)


def plot_explorer(src_img, trg_img, results: Mapping, img_size: int, gt_xy=None, title: str | None = None,
                  axes=None, save: str | Path | None = None) -> Figure:
    """The explorer's view of one click (``{label: ClickResult}`` of :func:`~sd4match_utils.explore.explore_click`):
    the source point, then per prompt :func:`plot_similarity`'s panel plus the numbered top-k candidates
    (``gid="candidate"``).

    Shape:
        - gt_xy: :math:`(2)` in ``img_size`` pixels, or ``None``
    """
    if not results:
        raise ValueError("plot_explorer needs at least one result")
    labels = {label: f"prompt: {label}" for label in results}
    fig = plot_similarity(src_img, trg_img, next(iter(results.values())).src_xy,
                          {labels[k]: r.heatmap for k, r in results.items()},
                          pred_xy={labels[k]: r.pred_xy for k, r in results.items()}, gt_xy=gt_xy,
                          img_size=img_size, axes=axes)
    for ax, r in zip(fig.axes[1:1 + len(results)], results.values()):
        for rank, (x, y) in enumerate(r.topk_xy, start=1):
            ax.scatter([x], [y], s=45, c="white", edgecolors="black", linewidths=0.6, zorder=3, gid="candidate")
            ax.text(x, y, str(rank), fontsize=5, ha="center", va="center", zorder=5)
        ax.set_xlabel(f"{r.matcher}: ({r.pred_xy[0]:.0f}, {r.pred_xy[1]:.0f})", fontsize=8)
    fig.axes[0].set_title("source: the clicked point", fontsize=9)
    return finish(fig, save, title, own=axes is None)


def plot_best_worst(runs: pd.DataFrame, selection: pd.DataFrame, alpha: float = 0.1, title: str | None = None,
                    save: str | Path | None = None) -> Figure:
    """The selected best and worst pairs (:func:`~sd4match_utils.benchmark.best_worst`), one row per dataset ×
    prompt: :func:`plot_matches` of each pair at PCK@``alpha``."""
    groups = list(selection.groupby(["dataset", "prompt", "matcher"], sort=False))
    nrows, ncols = max(len(groups), 1), max((len(g) for _, g in groups), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.4 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, ((dataset, prompt, matcher), sel) in enumerate(groups):
        run = runs[(runs["dataset"] == dataset) & (runs["prompt"] == prompt)].iloc[0]
        ds = load_dataset(run.dataset, run.root, run.split, img_size=int(run.img_size))
        index = {(e.pair_id, e.category): i for i, e in enumerate(ds.entries)}
        df = load_predictions(run.folder)
        df = df[df["matcher"] == matcher]
        for c, row in enumerate(sel.itertuples(index=False)):
            p = df[(df["pair_id"] == row.pair_id) & (df["category"] == row.category)].sort_values("kp_index")
            correct = correct_rows(p, alpha, img_size=int(run.img_size))
            axes[r, c].axis("on")
            plot_matches(ds[index[(row.pair_id, row.category)]], p[["pred_x", "pred_y"]].to_numpy(float), correct,
                         ax=axes[r, c],
                         title=f"{row.which} {row.rank} · {BENCHMARK_NAMES.get(dataset, dataset)} · {row.category}\n"
                               f"{prompt} · PCK {row.pck:.0f}% ({row.n_correct}/{row.n_kps})")
            axes[r, c].title.set_fontsize(7)
    return finish(fig, save, title)


def plot_prediction_changes(dataset, changes: pd.DataFrame, labels: tuple[str, str] = ("Class", "CPM"),
                            n_pairs: int = 3, title: str | None = None, save: str | Path | None = None) -> Figure:
    """The ``n_pairs`` pairs of :func:`~sd4match_utils.benchmark.prediction_changes` with the most changed keypoints
    (then most fixed + broken), source | target side by side: numbered changed source keypoints, the ground truth
    (hollow yellow), prompt A's prediction (×) and B's (●), green when correct, an arrow from A's to B's."""
    stats = changes.assign(decided=changes["outcome"].isin(["fixed", "broken"]))
    stats = stats.groupby(["pair_id", "category"], sort=False)[["changed", "decided"]].sum()
    pairs = list(stats.sort_values(["changed", "decided"], ascending=False, kind="stable").index[:n_pairs])
    index = {(e.pair_id, e.category): i for i, e in enumerate(dataset.entries)}
    s = int(dataset.img_size)
    fig, axes = plt.subplots(max(len(pairs), 1), 1, figsize=(7.2, 3.7 * max(len(pairs), 1)), squeeze=False)
    for ax, (pair_id, category) in zip(axes[:, 0], pairs):
        show_pair(ax, dataset[index[(pair_id, category)]], s)
        rows = changes[(changes["pair_id"] == pair_id) & (changes["category"] == category)].sort_values("kp_index")
        for r in rows.itertuples(index=False):
            ax.scatter([r.src_x], [r.src_y], s=18, c="white", edgecolors="black", linewidths=0.6, zorder=3)
            ax.scatter([r.gt_x + s], [r.gt_y], s=42, facecolors="none", edgecolors=GT, linewidths=1.2, zorder=3)
            ax.scatter([r.pred_x_a + s], [r.pred_y_a], s=30, marker="x", c=OK if r.correct_a else WRONG,
                       linewidths=1.5, zorder=4)
            ax.scatter([r.pred_x_b + s], [r.pred_y_b], s=22, c=OK if r.correct_b else WRONG, edgecolors="black",
                       linewidths=0.5, zorder=5)
            if r.changed:
                ax.annotate("", xy=(r.pred_x_b + s, r.pred_y_b), xytext=(r.pred_x_a + s, r.pred_y_a),
                            arrowprops={"arrowstyle": "->", "color": "white", "lw": 1.0}, zorder=4)
                ax.text(r.src_x + 3, r.src_y - 3, str(int(r.kp_index)), color="white", fontsize=6, zorder=5)
        n = len(rows)
        ax.set_title(f"{category} · {pair_id}: {labels[0]} {int(rows['correct_a'].sum())}/{n} → {labels[1]} "
                     f"{int(rows['correct_b'].sum())}/{n} correct · {int(rows['changed'].sum())} changed "
                     f"(× {labels[0]}, ● {labels[1]})", fontsize=7)
    if not pairs:
        axes[0, 0].text(0.5, 0.5, "no pairs", ha="center", va="center")
        axes[0, 0].axis("off")
    return finish(fig, save, title)


# PNGs for the widgets (:mod:`~sd4match_utils.widgets`)

_YELLOW, _WHITE, _BLACK = (255, 217, 47), (255, 255, 255), (0, 0, 0)
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _shown(xy, scale: float) -> np.ndarray:
    """Pixel centres of points ``(x, y)`` in an image shown ``scale`` times larger."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * scale


def _dot(draw: ImageDraw.ImageDraw, xy, r: float, fill, outline=_BLACK, width: int = 1) -> None:
    x, y = xy
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=width)


def render_source_png(image: Image.Image, img_size: int, display: int = 256, click_xy=None, kps=None) -> bytes:
    """The source image at ``display × display`` with the annotated keypoints (small hollow circles) and the
    clicked point (yellow dot)."""
    img = Image.fromarray(resized(image, display))
    draw = ImageDraw.Draw(img)
    s = display / img_size
    if kps is not None:
        for xy in _shown(np.asarray(kps, dtype=np.float64).reshape(-1, 2), s):
            _dot(draw, xy, 3, None, _WHITE)
    if click_xy is not None:
        _dot(draw, _shown(click_xy, s), 5, _YELLOW, width=2)
    return _png(img)


def render_target_png(image: Image.Image, result: ClickResult, display: int = 256, gt_xy=None,
                      alpha: float = 0.5) -> bytes:
    """The target image at ``display × display`` under the heat-map (scaled to its own min..max), with the top-k
    candidates (numbered dots, best = 1), the ground truth (yellow dot) when given, and the prediction (white ×)."""
    up = upsample_map(result.heatmap, display)
    lo, hi = float(up.min()), float(up.max())
    norm = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    heat = (matplotlib.colormaps["jet"](norm)[..., :3] * 255).astype(np.uint8)
    mixed = (1 - alpha) * resized(image, display).astype(np.float32) + alpha * heat.astype(np.float32)
    img = Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    s = display / result.img_size
    font = ImageFont.load_default()
    for rank, xy in reversed(list(enumerate(_shown(result.topk_xy, s), start=1))):
        _dot(draw, xy, 6, _WHITE)
        draw.text(tuple(xy), str(rank), fill=_BLACK, font=font, anchor="mm")
    if gt_xy is not None:
        _dot(draw, _shown(gt_xy, s), 5, _YELLOW, width=2)
    x, y = _shown(result.pred_xy, s)
    for colour, width in ((_BLACK, 5), (_WHITE, 3)):
        draw.line([x - 7, y - 7, x + 7, y + 7], fill=colour, width=width)
        draw.line([x - 7, y + 7, x + 7, y - 7], fill=colour, width=width)
    return _png(img)


def render_points_png(image: Image.Image, points: Mapping[str, Sequence[float]], display: int = 384,
                      highlight: str | None = None) -> bytes:
    """The image ``display`` pixels wide (aspect kept) with named points ``{name: (x, y)}`` (original pixels), each
    a coloured dot with its name; ``highlight`` gets a larger yellow ring."""
    w, h = image.size
    scale = display / w
    img = image.convert("RGB").resize((display, max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, (name, xy) in enumerate(points.items()):
        x, y = _shown(xy, scale)
        if name == highlight:
            _dot(draw, (x, y), 9, None, _YELLOW, width=3)
        _dot(draw, (x, y), 5, _PALETTE[i % len(_PALETTE)])
        draw.text((x + 8, y - 6), name, fill=_WHITE, font=font, stroke_width=2, stroke_fill=_BLACK)
    return _png(img)
