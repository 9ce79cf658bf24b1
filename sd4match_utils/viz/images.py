"""Plots drawn on images: PCA colourings of feature maps, similarity heat-maps, keypoint matches, the explorer's
static view, the best and worst pairs of a benchmark run, where two prompts' predictions differ, and the PNGs the
explorer and annotator widgets show (drawn with PIL, fast enough to redraw on every click)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from ..benchmark import BENCHMARK_NAMES, load_predictions
from ..explore import ClickResult
from ..metrics import clamp_gt, pck_correct
from .base import GT, OK, WRONG, as_points, finish, flat_axes, new_axes, resized, upsample_map

#: A principal component whose value range is below this fraction of the first one's is drawn flat (0.5).
_FLAT_COMPONENT = 1e-6


def _as_chw(feat, name: str) -> np.ndarray:
    """A ``(C, h, w)`` tensor / array as float64 numpy."""
    if isinstance(feat, torch.Tensor):
        feat = feat.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(feat, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (C, h, w), got {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"{name} must be non-empty, got {arr.shape}")
    return arr


def pca_rgb_joint(feats: Sequence) -> list[np.ndarray]:
    """Colour several feature maps with their first 3 principal components, in one shared basis.

    All cells of all maps are pooled, centred, and projected on the top 3 eigenvectors of their channel
    covariance; each component is min-max scaled to ``[0, 1]`` over all maps together, so the same colour means
    the same feature direction in every map. Each eigenvector's sign is fixed (its largest-magnitude entry is
    positive), so the colouring is deterministic. Components whose range is negligible next to the first one
    (e.g. the data have rank 1) are drawn as a constant 0.5 rather than amplified noise; with fewer than 3
    channels the missing components are 0.5 too.

    Args:
        feats: ``M`` feature maps of shapes ``(C, h_i, w_i)`` (same ``C``; tensors or arrays).

    Returns:
        ``M`` float32 arrays ``(h_i, w_i, 3)`` with values in ``[0, 1]``.
    """
    if len(feats) == 0:
        raise ValueError("pca_rgb_joint needs at least one feature map")
    maps = [_as_chw(f, f"feats[{i}]") for i, f in enumerate(feats)]
    c = maps[0].shape[0]
    if any(m.shape[0] != c for m in maps):
        raise ValueError(f"all maps must have the same number of channels, got {[m.shape[0] for m in maps]}")
    rows = np.concatenate([m.reshape(c, -1).T for m in maps], axis=0)  # (sum h·w, C)
    if not np.all(np.isfinite(rows)):
        raise ValueError("feature maps contain NaN or infinite values")
    rows = rows - rows.mean(axis=0, keepdims=True)
    _, vecs = np.linalg.eigh(rows.T @ rows)  # ascending eigenvalues
    k = min(3, c)
    vecs = vecs[:, ::-1][:, :k]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(k)])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    proj = rows @ vecs  # (sum h·w, k)
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    span = hi - lo
    ref = span[0] if span.size else 0.0
    rgb = np.full((rows.shape[0], 3), 0.5)
    for j in range(k):
        if span[j] > max(_FLAT_COMPONENT * ref, 1e-12):
            rgb[:, j] = (proj[:, j] - lo[j]) / span[j]
    out, start = [], 0
    for m in maps:
        n = m.shape[1] * m.shape[2]
        out.append(np.clip(rgb[start : start + n], 0.0, 1.0).reshape(m.shape[1], m.shape[2], 3).astype(np.float32))
        start += n
    return out


def pca_rgb(feat) -> np.ndarray:
    """First 3 principal components of one feature map as colours.

    Args:
        feat: ``(C, h, w)`` feature map (tensor or array).

    Returns:
        ``(h, w, 3)`` float32 in ``[0, 1]`` (see :func:`pca_rgb_joint` for the details).
    """
    return pca_rgb_joint([feat])[0]



def plot_pca(
    images: Sequence,
    feats_by_layer: Mapping[int, torch.Tensor],
    img_size: int | None = None,
    joint: bool = True,
    layer_names: Mapping[int, str] | None = None,
    title: str | None = None,
    axes=None,
    save: str | Path | None = None,
) -> Figure:
    """Grid of PCA colourings: one row per image, columns = the image then one panel per layer.

    Args:
        images: ``B`` PIL images (shown resized to ``img_size`` when given).
        feats_by_layer: ``{layer: (B, C_l, h_l, w_l)}`` features of those images (e.g. a
            :class:`~sd4match_utils.features.FeatureExtractor` output).
        img_size: display size of the images (``None``: as given).
        joint: share one PCA basis across the ``B`` images of a layer (the same colour then marks the same
            feature direction in every image); ``False`` fits each map alone.
        layer_names: optional column titles per layer (default ``"up_blocks[l]  C×h×w"``).
        title: optional figure title.
        axes: ``B × (1 + L)`` axes to draw into (any shape with that many); default a new figure.
        save: optional path for :func:`save_figure`.

    Returns:
        The figure (``B · (1 + L)`` axes).
    """
    layers = list(feats_by_layer)
    b = len(images)
    if b == 0 or not layers:
        raise ValueError("plot_pca needs at least one image and one layer")
    for l in layers:
        if feats_by_layer[l].shape[0] != b:
            raise ValueError(f"layer {l} has features for {feats_by_layer[l].shape[0]} images, expected {b}")
    ncols = 1 + len(layers)
    if axes is None:
        fig, grid = new_axes(b, ncols)
    else:
        grid = np.asarray(flat_axes(axes, b * ncols, "plot_pca"), dtype=object).reshape(b, ncols)
        fig = grid[0, 0].figure
    colours = {}
    for l in layers:
        maps = [feats_by_layer[l][i] for i in range(b)]
        colours[l] = pca_rgb_joint(maps) if joint else [pca_rgb(m) for m in maps]
    for i, image in enumerate(images):
        ax = grid[i, 0]
        ax.imshow(resized(image, img_size))
        if i == 0:
            ax.set_title("image", fontsize=9)
        for j, l in enumerate(layers, start=1):
            ax = grid[i, j]
            ax.imshow(colours[l][i], interpolation="nearest")
            if i == 0:
                c, h, w = tuple(feats_by_layer[l].shape[1:])
                title = (layer_names or {}).get(l, f"up_blocks[{l}]  {c}×{h}×{w}")
                ax.set_title(title, fontsize=9)
    for ax in grid.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return finish(fig, save, title, own=axes is None)


def plot_similarity(
    src_img,
    trg_img,
    src_xy,
    sim_map,
    pred_xy=None,
    gt_xy=None,
    img_size: int | None = None,
    cmap: str = "jet",
    alpha: float = 0.55,
    title: str | None = None,
    axes=None,
    save: str | Path | None = None,
) -> Figure:
    """The source with its keypoint, then the target under each similarity heat-map.

    Args:
        src_img, trg_img: PIL images (shown resized to ``img_size`` when given).
        src_xy: ``(2,)`` source keypoint ``(x, y)`` in ``img_size`` pixels.
        sim_map: ``(h, w)`` cosine map of that keypoint against the target, or ``{label: (h, w)}`` for several
            (one target panel each, e.g. one per up-block). Each map is upsampled bilinearly (align corners) to
            the image size before it is overlaid.
        pred_xy: ``(2,)`` predicted target point, or ``{label: (2,)}`` matching ``sim_map``'s labels.
        gt_xy: ``(2,)`` ground-truth target point (drawn in every target panel).
        img_size: display size of both images; default the source image's width (images should then be square).
        cmap, alpha: colour map and opacity of the heat-map.
        title: optional figure title.
        axes: ``1 + M`` axes (``M`` maps); default a new figure with one row.
        save: optional path for :func:`save_figure`.

    Returns:
        The figure (``1 + M`` axes).
    """
    maps = dict(sim_map) if isinstance(sim_map, Mapping) else {"similarity": sim_map}
    if not maps:
        raise ValueError("plot_similarity needs at least one similarity map")
    preds = dict(pred_xy) if isinstance(pred_xy, Mapping) else {k: pred_xy for k in maps}
    src = resized(src_img, img_size)
    size = src.shape[1] if img_size is None else int(img_size)
    trg = resized(trg_img, size)
    n = 1 + len(maps)
    if axes is None:
        fig, grid = new_axes(1, n)
        flat = list(grid.ravel())
    else:
        flat = flat_axes(axes, n, "plot_similarity")
        fig = flat[0].figure
    sx, sy = as_points(src_xy, "src_xy")[0]
    flat[0].imshow(src)
    flat[0].scatter([sx], [sy], s=60, c=GT, edgecolors="black", linewidths=1.0, zorder=3)
    flat[0].set_title("source keypoint", fontsize=9)
    for ax, (label, sim) in zip(flat[1:], maps.items()):
        ax.imshow(trg)
        ax.imshow(upsample_map(sim, size), cmap=cmap, alpha=alpha, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        if gt_xy is not None:
            gx, gy = as_points(gt_xy, "gt_xy")[0]
            ax.scatter([gx], [gy], s=60, c=GT, edgecolors="black", linewidths=1.0, zorder=3, label="ground truth")
        pred = preds.get(label)
        if pred is not None:
            px, py = as_points(pred, "pred_xy")[0]
            ax.scatter([px], [py], s=70, marker="x", c="white", linewidths=2.0, zorder=4, label="prediction")
        ax.set_title(str(label), fontsize=9)
    for ax in flat:
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(flat) > 1 and (gt_xy is not None or any(p is not None for p in preds.values())):
        flat[-1].legend(loc="lower right", fontsize=7, framealpha=0.7)
    return finish(fig, save, title, own=axes is None)


def plot_matches(
    sample,
    pred,
    correct,
    show_gt: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Source and target side by side, a line from each source keypoint to its prediction, green when correct.

    Args:
        sample: a :class:`~sd4match_utils.data.PairSample` (uses ``src_image``, ``trg_image``, ``src_kps_r``,
            ``trg_kps_r`` and ``img_size``).
        pred: ``(N, 2)`` predicted target points in ``img_size`` pixels.
        correct: ``(N,)`` bool, e.g. from :func:`~sd4match_utils.metrics.pck_correct`.
        show_gt: mark the ground-truth target points (hollow circles) too.
        title: optional axes title.
        ax: one axes to draw into; default a new figure.
        save: optional path for :func:`save_figure`.

    Returns:
        The figure (1 axes; its match lines have ``gid="match"``, the white separator ``gid="separator"``).
    """
    s = int(sample.img_size)
    src_kps = as_points(sample.src_kps_r, "sample.src_kps_r")
    pred = as_points(pred, "pred")
    correct = np.asarray(correct.detach().cpu() if isinstance(correct, torch.Tensor) else correct, dtype=bool)
    correct = correct.reshape(-1)
    if not (src_kps.shape[0] == pred.shape[0] == correct.shape[0]):
        raise ValueError(f"need as many predictions and flags as keypoints: {src_kps.shape[0]} keypoints, "
                         f"{pred.shape[0]} predictions, {correct.shape[0]} flags")
    canvas = np.concatenate([resized(sample.src_image, s), resized(sample.trg_image, s)], axis=1)
    if ax is None:
        fig, grid = new_axes(1, 1, panel=1)
        fig.set_size_inches(7.0, 3.6)
        ax = grid[0, 0]
        own = True
    else:
        fig, own = ax.figure, False
    ax.imshow(canvas)
    ax.axvline(s - 0.5, color="white", linewidth=1.0, gid="separator")
    for (x0, y0), (x1, y1), ok in zip(src_kps, pred, correct):
        colour = OK if ok else WRONG
        ax.plot([x0, x1 + s], [y0, y1], color=colour, linewidth=1.2, alpha=0.9, gid="match")
    ax.scatter(src_kps[:, 0], src_kps[:, 1], s=18, c="white", edgecolors="black", linewidths=0.6, zorder=3)
    ax.scatter(pred[:, 0] + s, pred[:, 1], s=22, c=np.where(correct, OK, WRONG), edgecolors="black",
               linewidths=0.6, zorder=4)
    if show_gt:
        gt = as_points(sample.trg_kps_r, "sample.trg_kps_r")
        ax.scatter(gt[:, 0] + s, gt[:, 1], s=40, facecolors="none", edgecolors=GT, linewidths=1.2, zorder=3)
    n_ok = int(correct.sum())
    ax.set_title(title if title is not None else f"{n_ok}/{correct.size} correct", fontsize=9)
    ax.set_xlim(-0.5, 2 * s - 0.5)
    ax.set_ylim(s - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return finish(fig, save, own=own)


def plot_explorer(
    src_img,
    trg_img,
    results: Mapping,
    img_size: int,
    gt_xy=None,
    title: str | None = None,
    axes=None,
    save: str | Path | None = None,
) -> Figure:
    """The match explorer's view as a static figure: the clicked source point, then one target panel per prompt
    with the similarity heat-map, the prediction (white cross), the top-k candidates (numbered, best = 1) and the
    ground truth (yellow dot) when given.

    Args:
        src_img, trg_img: PIL images (shown resized to ``img_size``).
        results: ``{label: ClickResult}`` from :func:`~sd4match_utils.explore.explore_click` (one click).
        img_size: side of the resized images the results refer to.
        gt_xy: ``(2,)`` ground-truth target point, or ``None``.
        title, axes, save: as in :func:`plot_similarity` (``1 + len(results)`` axes).

    Returns:
        The figure (``1 + M`` axes; candidate markers have ``gid="candidate"``).
    """
    if not results:
        raise ValueError("plot_explorer needs at least one result")
    first = next(iter(results.values()))
    labels = {label: f"prompt: {label}" for label in results}
    fig = plot_similarity(src_img, trg_img, first.src_xy, {labels[k]: r.heatmap for k, r in results.items()},
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
    """The selected best and worst pairs (:func:`~sd4match_utils.benchmark.best_worst`) with their matches, one row
    per dataset × prompt: :func:`plot_matches` of each pair (green within ``alpha · thr``, red otherwise, hollow
    yellow circles at the ground truth)."""
    from ..data import load_dataset

    groups = list(selection.groupby(["dataset", "prompt", "matcher"], sort=False))
    ncols = max((len(g) for _, g in groups), default=1)
    fig, axes = new_axes(max(len(groups), 1), ncols, panel=1)
    fig.set_size_inches(3.6 * ncols, 2.4 * max(len(groups), 1) + 0.4)
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
            pred = p[["pred_x", "pred_y"]].to_numpy(float)
            correct = pck_correct(pred, clamp_gt(p[["gt_x", "gt_y"]].to_numpy(float), int(run.img_size)),
                                  p["thr"].to_numpy(float), alpha)
            axes[r, c].axis("on")
            plot_matches(ds[index[(row.pair_id, row.category)]], pred, correct, ax=axes[r, c],
                         title=f"{row.which} {row.rank} · {BENCHMARK_NAMES.get(dataset, dataset)} · {row.category}\n"
                               f"{prompt} · PCK {row.pck:.0f}% ({row.n_correct}/{row.n_kps})")
            axes[r, c].title.set_fontsize(7)
    return finish(fig, save, title)


def plot_prediction_changes(dataset, changes: pd.DataFrame, labels: tuple[str, str] = ("Class", "CPM"),
                            n_pairs: int = 3, title: str | None = None, save: str | Path | None = None) -> Figure:
    """Pairs where prompt B (e.g. CPM) answers differently from prompt A (e.g. Class), both predictions drawn.

    Source | target side by side (resized to the dataset's ``img_size``): numbered source keypoints; on the target
    the ground truth (hollow yellow), A's prediction (×) and B's (●), each green when within ``alpha · thr`` and
    red otherwise, and an arrow from A's to B's prediction for every changed keypoint. The pairs shown are the
    ``n_pairs`` with the most changed keypoints (then most fixed + broken) of
    :func:`~sd4match_utils.benchmark.prediction_changes`.
    """
    stats = changes.assign(decided=changes["outcome"].isin(["fixed", "broken"]))
    stats = stats.groupby(["pair_id", "category"], sort=False)[["changed", "decided"]].sum()
    pairs = list(stats.sort_values(["changed", "decided"], ascending=False, kind="stable").index[:n_pairs])
    index = {(e.pair_id, e.category): i for i, e in enumerate(dataset.entries)}
    s = int(dataset.img_size)
    fig, axes = new_axes(max(len(pairs), 1), 1, panel=1)
    fig.set_size_inches(7.2, 3.7 * max(len(pairs), 1))
    for ax, (pair_id, category) in zip(axes[:, 0], pairs):
        sample = dataset[index[(pair_id, category)]]
        ax.imshow(np.concatenate([resized(sample.src_image, s), resized(sample.trg_image, s)], axis=1))
        ax.axvline(s - 0.5, color="white", linewidth=1.0)
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
        ax.set_xlim(-0.5, 2 * s - 0.5)
        ax.set_ylim(s - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
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


def _dot(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill, outline=_BLACK, width: int = 1) -> None:
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=outline, width=width)


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, r: float) -> None:
    for colour, w in ((_BLACK, 5), (_WHITE, 3)):
        draw.line([x - r, y - r, x + r, y + r], fill=colour, width=w)
        draw.line([x - r, y + r, x + r, y - r], fill=colour, width=w)


def _heat_rgb(heatmap: np.ndarray, display: int, cmap: str = "jet") -> np.ndarray:
    """``(h, w)`` map → ``(display, display, 3)`` uint8 colours, upsampled bilinearly with aligned corners (cell
    ``j`` at pixel ``j·(display − 1)/(w − 1)``, as the matcher's grid), scaled to its own min..max."""
    up = upsample_map(heatmap, display)
    lo, hi = float(up.min()), float(up.max())
    norm = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    return (matplotlib.colormaps[cmap](norm)[..., :3] * 255).astype(np.uint8)


def render_source_png(image: Image.Image, img_size: int, display: int = 256, click_xy=None, kps=None) -> bytes:
    """The source image at ``display × display`` with the annotated keypoints (small hollow circles) and the
    clicked point (yellow dot). Points are in ``img_size`` pixels."""
    img = Image.fromarray(resized(image, display))
    draw = ImageDraw.Draw(img)
    s = display / img_size
    if kps is not None:
        for x, y in np.asarray(kps, dtype=np.float64).reshape(-1, 2):
            draw.ellipse([(x + 0.5) * s - 3, (y + 0.5) * s - 3, (x + 0.5) * s + 3, (y + 0.5) * s + 3], outline=_WHITE)
    if click_xy is not None:
        x, y = np.asarray(click_xy, dtype=np.float64)
        _dot(draw, (x + 0.5) * s, (y + 0.5) * s, 5, _YELLOW, width=2)
    return _png(img)


def render_target_png(image: Image.Image, result: ClickResult, display: int = 256, gt_xy=None,
                      alpha: float = 0.5) -> bytes:
    """The target image under the heat-map, with the top-k candidates (numbered dots, best = 1), the prediction
    (white cross) and, when given, the ground truth (yellow dot), at ``display × display``."""
    base = resized(image, display).astype(np.float32)
    mixed = (1 - alpha) * base + alpha * _heat_rgb(result.heatmap, display).astype(np.float32)
    img = Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    s = display / result.img_size
    font = ImageFont.load_default()
    for rank, (x, y) in reversed(list(enumerate(result.topk_xy, start=1))):
        px, py = (x + 0.5) * s, (y + 0.5) * s
        _dot(draw, px, py, 6, _WHITE)
        draw.text((px, py), str(rank), fill=_BLACK, font=font, anchor="mm")
    if gt_xy is not None:
        gx, gy = np.asarray(gt_xy, dtype=np.float64)
        _dot(draw, (gx + 0.5) * s, (gy + 0.5) * s, 5, _YELLOW, width=2)
    px, py = result.pred_xy
    _cross(draw, (px + 0.5) * s, (py + 0.5) * s, 7)
    return _png(img)


def render_points_png(image: Image.Image, points: Mapping[str, Sequence[float]], display: int = 384,
                      highlight: str | None = None) -> bytes:
    """An image ``display`` pixels wide (aspect kept) with named points ``{name: (x, y)}`` in original pixels,
    each a coloured dot with its name; ``highlight`` gets a larger ring."""
    w, h = image.size
    scale = display / w
    img = image.convert("RGB").resize((display, max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i, (name, (x, y)) in enumerate(points.items()):
        px, py = (x + 0.5) * scale, (y + 0.5) * scale
        colour = _PALETTE[i % len(_PALETTE)]
        if name == highlight:
            draw.ellipse([px - 9, py - 9, px + 9, py + 9], outline=_YELLOW, width=3)
        _dot(draw, px, py, 5, colour)
        draw.text((px + 8, py - 6), name, fill=_WHITE, font=font, stroke_width=2, stroke_fill=_BLACK)
    return _png(img)
