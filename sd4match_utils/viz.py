"""Plotting for the notebooks: PCA colourings of feature maps, similarity heat-maps, keypoint matches, PCK grids.

Plotting only: the maths lives in :mod:`~sd4match_utils.matching` and :mod:`~sd4match_utils.metrics`. Every
``plot_*`` function returns the :class:`matplotlib.figure.Figure`, draws into the given ``ax`` / ``axes`` when
passed one (otherwise it makes its own figure), and writes the figure with :func:`save_figure` when ``save`` is
a path.

Coordinates are ``(x, y)`` pixels of the image resized to ``img_size × img_size`` (the paper's space, SPEC §2):
the functions resize the images they show to that size, so points and heat-maps line up with them.
Feature-grid cells are placed with the align-corners convention of :func:`~sd4match_utils.matching.pixel_to_grid`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from .cache import atomic_write_bytes

__all__ = [
    "DPI",
    "pca_rgb",
    "pca_rgb_joint",
    "plot_pca",
    "plot_similarity",
    "plot_matches",
    "plot_pck_grid",
    "plot_explorer",
    "save_figure",
]

#: Resolution of every saved raster figure.
DPI = 100
#: A principal component whose value range is below this fraction of the first one's is drawn flat (0.5).
_FLAT_COMPONENT = 1e-6
_OK, _WRONG, _GT = "#1a9850", "#d73027", "#ffd92f"


# --------------------------------------------------------------------------------------------------------------
# PCA colourings
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _resized(image, img_size: int | None) -> np.ndarray:
    """A PIL image (or ``(H, W, 3)`` array) as an RGB uint8 array resized to ``img_size × img_size`` (if given)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if img_size is not None and image.size != (img_size, img_size):
        image = image.resize((int(img_size), int(img_size)), Image.BILINEAR)
    return np.asarray(image)


def _points(xy, name: str) -> np.ndarray:
    """``(2,)`` or ``(N, 2)`` points as a float64 ``(N, 2)`` array."""
    if isinstance(xy, torch.Tensor):
        xy = xy.detach().cpu().numpy()
    arr = np.asarray(xy, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (2,) or (N, 2), got {arr.shape}")
    return arr


def _upsample_map(sim, size: int) -> np.ndarray:
    """``(h, w)`` map → ``(size, size)`` bilinear, align corners (cell ``j`` sits at pixel ``j·(size−1)/(w−1)``)."""
    t = torch.as_tensor(np.asarray(sim.detach().cpu() if isinstance(sim, torch.Tensor) else sim), dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"similarity map must have shape (h, w), got {tuple(t.shape)}")
    return F.interpolate(t[None, None], size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def _new_axes(nrows: int, ncols: int, panel: float = 2.6, **kw) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows), squeeze=False, **kw)
    return fig, axes


def _flat_axes(axes, n: int, what: str) -> list[Axes]:
    flat = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(flat) != n:
        raise ValueError(f"{what} needs {n} axes, got {len(flat)}")
    return flat


def _finish(fig: Figure, save, title: str | None = None, own: bool = False) -> Figure:
    """Add the figure title, tidy the layout of a figure the function made itself, save when asked."""
    if title is not None:
        fig.suptitle(title, fontsize=10)
    if own:
        fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig


# --------------------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------------------


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
        fig, grid = _new_axes(b, ncols)
    else:
        grid = np.asarray(_flat_axes(axes, b * ncols, "plot_pca"), dtype=object).reshape(b, ncols)
        fig = grid[0, 0].figure
    colours = {}
    for l in layers:
        maps = [feats_by_layer[l][i] for i in range(b)]
        colours[l] = pca_rgb_joint(maps) if joint else [pca_rgb(m) for m in maps]
    for i, image in enumerate(images):
        ax = grid[i, 0]
        ax.imshow(_resized(image, img_size))
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
    return _finish(fig, save, title, own=axes is None)


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
    src = _resized(src_img, img_size)
    size = src.shape[1] if img_size is None else int(img_size)
    trg = _resized(trg_img, size)
    n = 1 + len(maps)
    if axes is None:
        fig, grid = _new_axes(1, n)
        flat = list(grid.ravel())
    else:
        flat = _flat_axes(axes, n, "plot_similarity")
        fig = flat[0].figure
    sx, sy = _points(src_xy, "src_xy")[0]
    flat[0].imshow(src)
    flat[0].scatter([sx], [sy], s=60, c=_GT, edgecolors="black", linewidths=1.0, zorder=3)
    flat[0].set_title("source keypoint", fontsize=9)
    for ax, (label, sim) in zip(flat[1:], maps.items()):
        ax.imshow(trg)
        ax.imshow(_upsample_map(sim, size), cmap=cmap, alpha=alpha, extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        if gt_xy is not None:
            gx, gy = _points(gt_xy, "gt_xy")[0]
            ax.scatter([gx], [gy], s=60, c=_GT, edgecolors="black", linewidths=1.0, zorder=3, label="ground truth")
        pred = preds.get(label)
        if pred is not None:
            px, py = _points(pred, "pred_xy")[0]
            ax.scatter([px], [py], s=70, marker="x", c="white", linewidths=2.0, zorder=4, label="prediction")
        ax.set_title(str(label), fontsize=9)
    for ax in flat:
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(flat) > 1 and (gt_xy is not None or any(p is not None for p in preds.values())):
        flat[-1].legend(loc="lower right", fontsize=7, framealpha=0.7)
    return _finish(fig, save, title, own=axes is None)


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
    src_kps = _points(sample.src_kps_r, "sample.src_kps_r")
    pred = _points(pred, "pred")
    correct = np.asarray(correct.detach().cpu() if isinstance(correct, torch.Tensor) else correct, dtype=bool)
    correct = correct.reshape(-1)
    if not (src_kps.shape[0] == pred.shape[0] == correct.shape[0]):
        raise ValueError(f"need as many predictions and flags as keypoints: {src_kps.shape[0]} keypoints, "
                         f"{pred.shape[0]} predictions, {correct.shape[0]} flags")
    canvas = np.concatenate([_resized(sample.src_image, s), _resized(sample.trg_image, s)], axis=1)
    if ax is None:
        fig, grid = _new_axes(1, 1, panel=1)
        fig.set_size_inches(7.0, 3.6)
        ax = grid[0, 0]
        own = True
    else:
        fig, own = ax.figure, False
    ax.imshow(canvas)
    ax.axvline(s - 0.5, color="white", linewidth=1.0, gid="separator")
    for (x0, y0), (x1, y1), ok in zip(src_kps, pred, correct):
        colour = _OK if ok else _WRONG
        ax.plot([x0, x1 + s], [y0, y1], color=colour, linewidth=1.2, alpha=0.9, gid="match")
    ax.scatter(src_kps[:, 0], src_kps[:, 1], s=18, c="white", edgecolors="black", linewidths=0.6, zorder=3)
    ax.scatter(pred[:, 0] + s, pred[:, 1], s=22, c=np.where(correct, _OK, _WRONG), edgecolors="black",
               linewidths=0.6, zorder=4)
    if show_gt:
        gt = _points(sample.trg_kps_r, "sample.trg_kps_r")
        ax.scatter(gt[:, 0] + s, gt[:, 1], s=40, facecolors="none", edgecolors=_GT, linewidths=1.2, zorder=3)
    n_ok = int(correct.sum())
    ax.set_title(title if title is not None else f"{n_ok}/{correct.size} correct", fontsize=9)
    ax.set_xlim(-0.5, 2 * s - 0.5)
    ax.set_ylim(s - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return _finish(fig, save, own=own)


def _pick(frame: pd.DataFrame, column: str, value, preferred) -> pd.DataFrame:
    """Keep rows where ``column == value``; when ``value`` is ``None`` and several values exist, keep the
    preferred one (or the first in sorted order)."""
    if column not in frame.columns:
        return frame
    if value is None:
        values = list(frame[column].unique())
        if len(values) <= 1:
            return frame
        value = preferred if preferred in values else sorted(values, key=str)[0]
    if column == "alpha":
        return frame[np.isclose(frame[column].astype(float), float(value))]
    return frame[frame[column] == value]


def plot_pck_grid(
    table: pd.DataFrame,
    kind: str = "heatmap",
    matcher: str | None = None,
    averaging: str | None = None,
    alpha: float | None = None,
    vmin: float = 0.0,
    vmax: float | None = None,
    title: str | None = None,
    axes=None,
    save: str | Path | None = None,
) -> Figure:
    """PCK over layer × timestep, one panel per prompt.

    Args:
        table: tidy rows with columns ``layer, timestep, prompt, pck`` and optionally ``matcher``,
            ``averaging``, ``alpha`` (the sweep table of notebook 01).
        kind: ``"heatmap"`` (rows = layers, columns = timesteps, values written in the cells, one shared colour
            bar) or ``"line"`` (PCK against timestep, one line per layer).
        matcher, averaging, alpha: the slice to draw; left ``None`` they default to ``kernel_softmax``,
            ``per_image`` and 0.1 when several are present.
        vmin, vmax: colour (heat-map) or y-axis (line) range; ``vmax`` defaults to the data's maximum (at least 1).
        title: optional figure title.
        axes: ``P`` axes for ``P`` prompts (plus one for the colour bar with ``kind="heatmap"``); default a new
            figure.
        save: optional path for :func:`save_figure`.

    Returns:
        The figure: ``P + 1`` axes for ``"heatmap"`` (the last is the colour bar), ``P`` for ``"line"``.
    """
    if kind not in ("heatmap", "line"):
        raise ValueError(f"kind must be 'heatmap' or 'line', got {kind!r}")
    missing = [c for c in ("layer", "timestep", "prompt", "pck") if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks the columns: {', '.join(missing)}")
    frame = _pick(table, "matcher", matcher, "kernel_softmax")
    frame = _pick(frame, "averaging", averaging, "per_image")
    frame = _pick(frame, "alpha", alpha, 0.1)
    if frame.empty:
        raise ValueError("no rows left to plot after selecting matcher / averaging / alpha")
    prompts = list(dict.fromkeys(frame["prompt"]))
    layers = sorted(frame["layer"].unique())
    timesteps = sorted(frame["timestep"].unique())
    top = float(frame["pck"].max())
    vmax = max(top, 1.0) if vmax is None else float(vmax)
    n = len(prompts) + (1 if kind == "heatmap" else 0)
    if axes is None:
        if kind == "heatmap":
            width = [1.0] * len(prompts) + [0.06]
            fig, grid = plt.subplots(1, n, figsize=(0.9 * len(timesteps) * len(prompts) + 2.2, 0.6 * len(layers) + 1.6),
                                     squeeze=False, gridspec_kw={"width_ratios": width})
        else:
            fig, grid = _new_axes(1, n, panel=3.4, sharey=True)
        flat = list(grid.ravel())
    else:
        flat = _flat_axes(axes, n, "plot_pck_grid")
        fig = flat[0].figure
    label = " · ".join(str(frame[c].iloc[0]) for c in ("matcher", "averaging") if c in frame.columns)
    if "alpha" in frame.columns:
        label = f"PCK@{float(frame['alpha'].iloc[0]):g} " + (f"({label})" if label else "")
    image = None
    for ax, prompt in zip(flat, prompts):
        sub = frame[frame["prompt"] == prompt]
        grid_vals = sub.pivot_table(index="layer", columns="timestep", values="pck", aggfunc="mean")
        grid_vals = grid_vals.reindex(index=layers, columns=timesteps)
        if kind == "heatmap":
            vals = grid_vals.to_numpy(dtype=float)
            image = ax.imshow(vals, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
            for i in range(vals.shape[0]):
                for j in range(vals.shape[1]):
                    if np.isfinite(vals[i, j]):
                        shade = (vals[i, j] - vmin) / max(vmax - vmin, 1e-9)
                        ax.text(j, i, f"{vals[i, j]:.1f}", ha="center", va="center", fontsize=8,
                                color="black" if shade > 0.6 else "white")
            ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
            ax.set_yticks(range(len(layers)), [f"up{l}" for l in layers])
            ax.set_xlabel("timestep t")
            ax.set_ylabel("up-block")
        else:
            for l in layers:
                ax.plot(timesteps, grid_vals.loc[l].to_numpy(dtype=float), marker="o", label=f"up_blocks[{l}]")
            ax.set_xlabel("timestep t")
            ax.set_ylabel(label or "PCK")
            ax.set_ylim(vmin, vmax * 1.05)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax.set_title(f"prompt: {prompt}", fontsize=9)
    if kind == "heatmap":
        cbar = fig.colorbar(image, cax=flat[-1])
        cbar.set_label(label or "PCK")
    return _finish(fig, save, title, own=axes is None)


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
        results: ``{label: ClickResult}`` from :func:`~sd4match_utils.explorer.explore_click` (one click).
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
    return _finish(fig, save, title, own=axes is None)


# --------------------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` reproducibly and atomically (temporary file in the same folder, then ``os.replace``).

    The format follows the suffix (``.png`` by default when there is none; ``.pdf`` and ``.svg`` too). No
    time stamps or software versions are embedded (PNG ``Software``, PDF ``CreationDate`` / ``Producer``, a fixed
    SVG hash salt), so the same figure gives the same bytes every time. Parent folders are created.

    Returns:
        The written path.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if not path.suffix:
        path = path.with_suffix(".png")
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None},
                "svg": {"Date": None}}.get(fmt)
    if metadata is None:
        raise ValueError(f"unsupported figure format {fmt!r}; use .png, .pdf or .svg")
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "sd4match"}):
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())
