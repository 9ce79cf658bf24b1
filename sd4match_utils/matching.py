"""Keypoint transfer from a source to a target feature map (SPEC §5 and §6).

Coordinates are ``(x, y)``. Two spaces are used:

* *pixel* coordinates in the resized image of ``img_size`` pixels per side (768 in the paper);
* *grid* coordinates on a feature map of ``h × w`` cells (48 × 48 for ``up_blocks[1]``), cell ``(i, j)`` at
  ``x_f = j``, ``y_f = i``.

They are related by the align-corners convention ``x_f = x · (w − 1)/(W − 1)`` (and likewise for ``y``), so
pixel ``0`` maps to cell ``0`` and pixel ``W − 1`` to cell ``w − 1``.

Every matcher starts from the cosine-similarity map ``S`` (``h × w``) of one source descriptor against every
target cell, with each vector divided by ``(its L2 norm + 1e-6)`` (SPEC §2). The matchers are:

``nn``
    the integer argmax cell of ``S``.
``bilinear``
    the ``nn`` matches of the 4 integer neighbours of the continuous source location, blended with the
    bilinear weights of that location.
``softmax``
    the expected cell coordinates under ``softmax(S / β)`` over the whole map.
``kernel_softmax`` (the paper's)
    ``S`` times a Gaussian ``exp(−d² / 2σ²)`` (``σ = 7`` cells) of the distance ``d`` to the argmax cell, then
    ``softmax(· / β)`` and the expected coordinates.
``window_softargmax`` (extension)
    ``softmax(S / β)`` restricted to the ``(2·window + 1)²`` cells around the argmax, expected coordinates.
``mutual_nn`` (extension)
    the best-scoring target cell whose own nearest neighbour in the source map lies within ``mnn_radius``
    cells of the source location; ``nn`` when there is no such cell.

For one clicked point, :func:`click_to_match` / :func:`explore_click` also return its heat-map (the cosine map
``S``) and the best distinct candidate cells (:func:`top_k_peaks`), as the quick-start explorer shows them.

All computations run in float32 on the device of the inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MATCHERS",
    "EPS",
    "pixel_to_grid",
    "grid_to_pixel",
    "sample_descriptors",
    "l2_normalize",
    "cosine_maps",
    "match",
    "match_all",
    "top_k_peaks",
    "ClickResult",
    "click_to_match",
    "explore_click",
]

#: Names of the available matchers, in the order they are usually reported.
MATCHERS = ("nn", "bilinear", "softmax", "kernel_softmax", "window_softargmax", "mutual_nn")

#: Added to the L2 norm before dividing (SPEC §2).
EPS = 1e-6


# --------------------------------------------------------------------------------------------------------------
# coordinates and sampling
# --------------------------------------------------------------------------------------------------------------


def _hw(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``size`` as an ``(H, W)`` pair of ints, each at least 2."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        hw = (int(size), int(size))
    else:
        try:
            hw = tuple(int(s) for s in size)  # type: ignore[union-attr]
        except TypeError as err:
            raise ValueError(f"{name} must be an int or an (H, W) pair, got {size!r}") from err
        if len(hw) != 2:
            raise ValueError(f"{name} must be an int or an (H, W) pair, got {size!r}")
    if min(hw) < 2:
        raise ValueError(f"{name} must be at least 2 along each side, got {size!r}")
    return hw  # type: ignore[return-value]


def _check_points(xy: Tensor, name: str) -> None:
    if not isinstance(xy, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(xy).__name__}")
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {tuple(xy.shape)}")


def _scale(xy: Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Tensor:
    """Map ``(N, 2)`` points between two align-corners grids of ``(H, W)`` sizes ``from_hw`` and ``to_hw``."""
    if not xy.is_floating_point():
        xy = xy.to(torch.float32)
    sx = (to_hw[1] - 1) / (from_hw[1] - 1)
    sy = (to_hw[0] - 1) / (from_hw[0] - 1)
    return xy * torch.tensor([sx, sy], dtype=xy.dtype, device=xy.device)


def pixel_to_grid(xy: Tensor, img_size: int | tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Pixel coordinates → feature-grid coordinates (align corners).

    Args:
        xy: ``(N, 2)`` points ``(x, y)`` in an image of ``img_size`` pixels.
        img_size: image side (square image) or ``(H, W)``.
        grid_hw: feature map size ``(h, w)``.

    Returns:
        ``(N, 2)`` grid coordinates ``x_f = x · (w − 1)/(W − 1)``, ``y_f = y · (h − 1)/(H − 1)``; floating
        inputs keep their dtype, integer inputs become float32.
    """
    _check_points(xy, "xy")
    return _scale(xy, _hw(img_size, "img_size"), _hw(grid_hw, "grid_hw"))


def grid_to_pixel(xy_f: Tensor, img_size: int | tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Feature-grid coordinates → pixel coordinates; the inverse of :func:`pixel_to_grid`.

    Args:
        xy_f: ``(N, 2)`` grid coordinates ``(x_f, y_f)``.
        img_size: image side (square image) or ``(H, W)``.
        grid_hw: feature map size ``(h, w)``.

    Returns:
        ``(N, 2)`` pixel coordinates ``x = x_f · (W − 1)/(w − 1)``, ``y = y_f · (H − 1)/(h − 1)``.
    """
    _check_points(xy_f, "xy_f")
    return _scale(xy_f, _hw(grid_hw, "grid_hw"), _hw(img_size, "img_size"))


def _check_feat(feat: Tensor, name: str) -> None:
    if not isinstance(feat, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feat).__name__}")
    if feat.ndim != 3:
        raise ValueError(f"{name} must have shape (C, h, w), got {tuple(feat.shape)}")
    if feat.shape[1] < 2 or feat.shape[2] < 2:
        raise ValueError(f"{name} must be at least 2 × 2 cells, got {tuple(feat.shape)}")


def _bilinear_corners(xy_f: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Integer corners and fractional weights of continuous grid points, clamped inside the grid.

    Args:
        xy_f: ``(N, 2)`` float32 grid coordinates.

    Returns:
        ``x0, x1, y0, y1`` (``(N,)`` long, ``x1 = x0 + 1``) and ``fx, fy`` (``(N,)`` float in ``[0, 1]``) with the
        clamped point equal to ``((1 − fx)·x0 + fx·x1, (1 − fy)·y0 + fy·y1)``.
    """
    x = xy_f[:, 0].clamp(0, w - 1)
    y = xy_f[:, 1].clamp(0, h - 1)
    x0 = x.floor().clamp(0, w - 2)
    y0 = y.floor().clamp(0, h - 2)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    return x0, x0 + 1, y0, y0 + 1, fx, fy


def sample_descriptors(feat: Tensor, xy_f: Tensor) -> Tensor:
    """Bilinearly sample a feature map at continuous grid points (align corners).

    Points outside the grid are clamped to its border (same as ``grid_sample(..., align_corners=True,
    padding_mode="border")``); at integer points the result is exactly the cell's vector.

    Args:
        feat: ``(C, h, w)`` feature map.
        xy_f: ``(N, 2)`` grid coordinates ``(x_f, y_f)``.

    Returns:
        ``(N, C)`` float32 descriptors.
    """
    _check_feat(feat, "feat")
    _check_points(xy_f, "xy_f")
    feat = feat.to(torch.float32)
    _, h, w = feat.shape
    x0, x1, y0, y1, fx, fy = _bilinear_corners(xy_f.to(device=feat.device, dtype=torch.float32), h, w)
    fx, fy = fx[:, None], fy[:, None]
    flat = feat.reshape(feat.shape[0], h * w).T  # (h·w, C)
    return (
        flat[y0 * w + x0] * ((1 - fx) * (1 - fy))
        + flat[y0 * w + x1] * (fx * (1 - fy))
        + flat[y1 * w + x0] * ((1 - fx) * fy)
        + flat[y1 * w + x1] * (fx * fy)
    )


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / (‖x‖₂ + 1e-6)`` along ``dim`` (SPEC §2; not ``F.normalize``, which clamps the norm instead)."""
    return x / (x.norm(dim=dim, keepdim=True) + EPS)


def cosine_maps(src_desc: Tensor, trg_feat: Tensor) -> Tensor:
    """Cosine similarity of each source descriptor with every target cell.

    Args:
        src_desc: ``(N, C)`` source descriptors.
        trg_feat: ``(C, h, w)`` target feature map.

    Returns:
        ``(N, h, w)`` float32 similarities, each vector divided by ``(its L2 norm + 1e-6)``.
    """
    _check_feat(trg_feat, "trg_feat")
    if not isinstance(src_desc, Tensor) or src_desc.ndim != 2:
        raise ValueError(f"src_desc must be a (N, C) tensor, got {getattr(src_desc, 'shape', src_desc)!r}")
    c, h, w = trg_feat.shape
    if src_desc.shape[1] != c:
        raise ValueError(f"src_desc has {src_desc.shape[1]} channels but trg_feat has {c}")
    trg = l2_normalize(trg_feat.to(torch.float32).reshape(c, h * w), dim=0)
    src = l2_normalize(src_desc.to(device=trg.device, dtype=torch.float32), dim=1)
    return (src @ trg).reshape(-1, h, w)


# --------------------------------------------------------------------------------------------------------------
# matchers on similarity maps; all return (N, 2) grid coordinates of the target
# --------------------------------------------------------------------------------------------------------------


def _cell_grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(h·w,)`` x and y coordinates of the cells in row-major order."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return xs.reshape(-1), ys.reshape(-1)


def _argmax_xy(sim: Tensor) -> Tensor:
    """``(N, h, w)`` maps → ``(N, 2)`` float32 ``(x, y)`` of each map's argmax (first one on ties)."""
    w = sim.shape[-1]
    idx = sim.flatten(1).argmax(dim=1)
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=1).to(torch.float32)


def _expected_xy(logits: Tensor) -> Tensor:
    """``(N, h, w)`` logits → ``(N, 2)`` expected ``(x, y)`` under ``softmax`` over each whole map."""
    n, h, w = logits.shape
    prob = torch.softmax(logits.reshape(n, h * w), dim=1)
    xs, ys = _cell_grid(h, w, logits.device)
    return torch.stack([prob @ xs, prob @ ys], dim=1)


def _softmax_match(sim: Tensor, beta: float) -> Tensor:
    return _expected_xy(sim / beta)


def _kernel_softmax_match(sim: Tensor, beta: float, sigma: float, peak: Tensor) -> Tensor:
    n, h, w = sim.shape
    xs, ys = _cell_grid(h, w, sim.device)
    d2 = (xs[None] - peak[:, :1]) ** 2 + (ys[None] - peak[:, 1:]) ** 2  # (N, h·w)
    kernel = torch.exp(-d2 / (2.0 * sigma**2)).reshape(n, h, w)
    return _expected_xy(sim * kernel / beta)


def _window_softargmax_match(sim: Tensor, beta: float, window: int, peak: Tensor) -> Tensor:
    n, h, w = sim.shape
    xs, ys = _cell_grid(h, w, sim.device)
    inside = ((xs[None] - peak[:, :1]).abs() <= window) & ((ys[None] - peak[:, 1:]).abs() <= window)
    logits = (sim / beta).masked_fill(~inside.reshape(n, h, w), float("-inf"))
    return _expected_xy(logits)


def _bilinear_match(src_feat: Tensor, trg_feat: Tensor, src_xy_f: Tensor) -> Tensor:
    """Blend the ``nn`` matches of the 4 integer neighbours of each source location (see module doc)."""
    _, h, w = src_feat.shape
    x0, x1, y0, y1, fx, fy = _bilinear_corners(src_xy_f, h, w)
    flat = src_feat.reshape(src_feat.shape[0], h * w).T  # (h·w, C)
    corners = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=1)  # (N, 4)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)  # (N, 4)
    n = corners.shape[0]
    sim = cosine_maps(flat[corners.reshape(-1)], trg_feat)  # (4N, h', w')
    pred = _argmax_xy(sim).reshape(n, 4, 2)
    return (weights[..., None] * pred).sum(dim=1)


def _mutual_nn_match(
    src_feat: Tensor, trg_feat: Tensor, src_xy_f: Tensor, sim: Tensor, radius: float, nn_xy: Tensor
) -> Tensor:
    """Best-scoring target cell whose backward nearest neighbour lies within ``radius`` of the source point."""
    c, h, w = src_feat.shape
    ht, wt = trg_feat.shape[1:]
    # backward nearest neighbour of every target cell among the source cells: (h'·w',) index into h·w
    src_cells = l2_normalize(src_feat.reshape(c, h * w), dim=0)
    trg_cells = l2_normalize(trg_feat.reshape(c, ht * wt), dim=0)
    back = (trg_cells.T @ src_cells).argmax(dim=1)
    back_xy = torch.stack([back % w, torch.div(back, w, rounding_mode="floor")], dim=1).to(torch.float32)
    d2 = ((src_xy_f[:, None, :] - back_xy[None, :, :]) ** 2).sum(dim=-1)  # (N, h'·w'), exact (no cdist mm)
    candidate = d2 <= radius**2 + 1e-6
    scores = sim.flatten(1).masked_fill(~candidate, float("-inf"))
    best = scores.argmax(dim=1)
    best_xy = torch.stack([best % wt, torch.div(best, wt, rounding_mode="floor")], dim=1).to(torch.float32)
    return torch.where(candidate.any(dim=1, keepdim=True), best_xy, nn_xy)


# --------------------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------------------


def _check_method(method: str) -> None:
    if method not in MATCHERS:
        raise ValueError(f"unknown matcher {method!r}; valid ones are: {', '.join(MATCHERS)}")


def match_all(
    src_feat: Tensor,
    trg_feat: Tensor,
    src_kps: Tensor,
    img_size: int | tuple[int, int],
    methods: tuple[str, ...] | list[str] | str = MATCHERS,
    *,
    beta: float = 0.04,
    kernel_sigma: float = 7.0,
    window: int = 3,
    mnn_radius: float = 1.5,
) -> dict[str, Tensor]:
    """Transfer source keypoints to the target with several matchers, sharing the similarity maps.

    Args:
        src_feat: ``(C, h, w)`` source feature map (any float dtype; computed in float32).
        trg_feat: ``(C, h', w')`` target feature map of the same pair.
        src_kps: ``(N, 2)`` source keypoints ``(x, y)`` in pixels of the ``img_size`` image (points outside
            the image are clamped to its border).
        img_size: side of the (square) resized images, or ``(H, W)``; both images share it.
        methods: matcher names (see :data:`MATCHERS`), or a single name.
        beta: softmax temperature of ``softmax``, ``kernel_softmax`` and ``window_softargmax``.
        kernel_sigma: Gaussian σ in cells of ``kernel_softmax``.
        window: half-size in cells of the ``window_softargmax`` window.
        mnn_radius: radius in source cells of the ``mutual_nn`` consistency check.

    Returns:
        ``{method: (N, 2) float32 predictions (x, y) in target pixels of the img_size image}``, on the device of
        ``trg_feat``.

    Raises:
        ValueError: on bad shapes, an unknown method name or a non-positive ``beta`` / ``kernel_sigma``.
    """
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    for m in methods:
        _check_method(m)
    _check_feat(src_feat, "src_feat")
    _check_feat(trg_feat, "trg_feat")
    if src_feat.shape[0] != trg_feat.shape[0]:
        raise ValueError(f"src_feat has {src_feat.shape[0]} channels but trg_feat has {trg_feat.shape[0]}")
    if src_feat.device != trg_feat.device:
        raise ValueError(f"src_feat is on {src_feat.device} but trg_feat is on {trg_feat.device}")
    _check_points(src_kps, "src_kps")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be positive, got {beta}")
    if not (kernel_sigma > 0):
        raise ValueError(f"kernel_sigma must be positive, got {kernel_sigma}")
    if int(window) != window or window < 0:
        raise ValueError(f"window must be a non-negative integer, got {window}")
    if not (mnn_radius >= 0):
        raise ValueError(f"mnn_radius must be non-negative, got {mnn_radius}")
    img_hw = _hw(img_size, "img_size")

    src_feat = src_feat.to(torch.float32)
    trg_feat = trg_feat.to(torch.float32)
    src_hw, trg_hw = tuple(src_feat.shape[1:]), tuple(trg_feat.shape[1:])
    src_xy_f = pixel_to_grid(src_kps.to(device=src_feat.device, dtype=torch.float32), img_hw, src_hw)
    # keypoints a hair outside the image (annotations at x = W) are treated as on its border
    src_xy_f = torch.stack([src_xy_f[:, 0].clamp(0, src_hw[1] - 1), src_xy_f[:, 1].clamp(0, src_hw[0] - 1)], dim=1)

    need_sim = any(m != "bilinear" for m in methods)
    sim = cosine_maps(sample_descriptors(src_feat, src_xy_f), trg_feat) if need_sim else None
    peak = _argmax_xy(sim) if need_sim else None

    out: dict[str, Tensor] = {}
    for m in methods:
        if m == "nn":
            xy_f = peak
        elif m == "bilinear":
            xy_f = _bilinear_match(src_feat, trg_feat, src_xy_f)
        elif m == "softmax":
            xy_f = _softmax_match(sim, beta)
        elif m == "kernel_softmax":
            xy_f = _kernel_softmax_match(sim, beta, kernel_sigma, peak)
        elif m == "window_softargmax":
            xy_f = _window_softargmax_match(sim, beta, int(window), peak)
        else:  # mutual_nn
            xy_f = _mutual_nn_match(src_feat, trg_feat, src_xy_f, sim, mnn_radius, peak)
        out[m] = grid_to_pixel(xy_f, img_hw, trg_hw)
    return out


def match(
    src_feat: Tensor,
    trg_feat: Tensor,
    src_kps: Tensor,
    img_size: int | tuple[int, int],
    method: str = "kernel_softmax",
    *,
    beta: float = 0.04,
    kernel_sigma: float = 7.0,
    window: int = 3,
    mnn_radius: float = 1.5,
) -> Tensor:
    """Transfer source keypoints to the target image with one matcher.

    The source descriptor is the bilinear (align-corners) sample of ``src_feat`` at each keypoint's continuous
    grid location (``bilinear`` instead uses the 4 neighbouring cells). Rules of each method:

    * ``nn``: integer argmax cell of the cosine map ``S``.
    * ``bilinear``: the 4 integer neighbours of the continuous source location (clamped inside the grid) each
      take their own cell descriptor and ``nn`` match; the 4 target coordinates are blended with the bilinear
      weights of the source location.
    * ``softmax``: expected cell coordinates under ``softmax(S / beta)`` over the whole map.
    * ``kernel_softmax`` (the paper's): ``S · exp(−d² / (2·kernel_sigma²))``, ``d`` the distance in cells to the
      argmax cell, then ``softmax(· / beta)`` and the expected coordinates.
    * ``window_softargmax``: ``softmax(S / beta)`` restricted to the ``(2·window + 1)²`` cells around the argmax
      (clipped at the borders), expected coordinates.
    * ``mutual_nn`` (keypoint-transfer version of mutual nearest neighbours): a target cell is a *candidate* for a
      keypoint when its own nearest neighbour back in the source map (cosine of the target cell's descriptor with
      every source cell) lies within ``mnn_radius`` source cells (Euclidean) of the keypoint's continuous source
      location. The prediction is the candidate with the highest ``S``; when no target cell is a candidate the
      prediction falls back to ``nn``. (With the plain ``nn`` cell mutual, the result is that cell.)

    Args:
        src_feat: ``(C, h, w)`` source feature map (any float dtype; computed in float32).
        trg_feat: ``(C, h', w')`` target feature map.
        src_kps: ``(N, 2)`` source keypoints ``(x, y)`` in pixels of the ``img_size`` image.
        img_size: side of the (square) resized images, or ``(H, W)``.
        method: one of :data:`MATCHERS`.
        beta, kernel_sigma, window, mnn_radius: see :func:`match_all`.

    Returns:
        ``(N, 2)`` float32 predicted target keypoints ``(x, y)`` in pixels of the ``img_size`` image.
    """
    _check_method(method)
    return match_all(
        src_feat,
        trg_feat,
        src_kps,
        img_size,
        (method,),
        beta=beta,
        kernel_sigma=kernel_sigma,
        window=window,
        mnn_radius=mnn_radius,
    )[method]


# --------------------------------------------------------------------------------------------------------------
# one clicked point: heat-map, prediction and the best candidate cells (the quick-start explorer)
# --------------------------------------------------------------------------------------------------------------


def top_k_peaks(heatmap: Tensor | np.ndarray, k: int = 5, min_distance: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest cells of a ``(h, w)`` map, greedily skipping cells within ``min_distance`` cells
    (Chebyshev) of a cell already taken, so the candidates are distinct places rather than neighbours of the best
    one (``min_distance=0``: the plain top-k; fewer than ``k`` when the map runs out of cells).

    Returns:
        ``(cells, scores)``: ``(k', 2)`` int64 ``(x, y)`` cell coordinates and ``(k',)`` float64 scores, sorted
        by score (highest first, ties by row-major cell order).
    """
    heat = heatmap.detach().cpu().double().numpy() if isinstance(heatmap, Tensor) else np.asarray(heatmap, np.float64)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must have shape (h, w), got {heat.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cells: list[tuple[int, int]] = []
    for idx in np.argsort(-heat.reshape(-1), kind="stable"):
        y, x = divmod(int(idx), heat.shape[1])
        if all(max(abs(x - cx), abs(y - cy)) > min_distance for cx, cy in cells):
            cells.append((x, y))
            if len(cells) == k:
                break
    xy = np.array(cells, dtype=np.int64).reshape(-1, 2)
    return xy, heat[xy[:, 1], xy[:, 0]] if len(xy) else np.zeros(0)


@dataclass(frozen=True)
class ClickResult:
    """What one prompt's features say about one clicked source point (``img_size`` pixels throughout):
    ``src_xy`` ``(2,)`` the point, ``pred_xy`` ``(2,)`` the matcher's prediction on the target, ``heatmap``
    ``(h, w)`` the point's cosine similarity with every target cell, ``topk_xy`` ``(k, 2)`` the best candidate
    cells' centres (best first) and ``topk_score`` ``(k,)`` their similarities."""

    prompt: str
    src_xy: np.ndarray
    pred_xy: np.ndarray
    heatmap: np.ndarray
    topk_xy: np.ndarray
    topk_score: np.ndarray
    matcher: str
    img_size: int

    def as_dict(self) -> dict:
        """JSON-friendly summary (no heat-map)."""
        return {"prompt": self.prompt, "matcher": self.matcher, "src_xy": [float(v) for v in self.src_xy],
                "pred_xy": [float(v) for v in self.pred_xy],
                "topk": [{"x": float(x), "y": float(y), "score": float(s)}
                         for (x, y), s in zip(self.topk_xy, self.topk_score)]}


def click_to_match(src_feat: Tensor, trg_feat: Tensor, xy, img_size: int, matcher: str = "kernel_softmax",
                   k: int = 5, min_distance: int = 1, prompt: str = "") -> ClickResult:
    """Match one source point ``xy`` (``(2,)``, ``img_size`` pixels, clamped to the image) from ``src_feat``
    ``(C, h, w)`` to ``trg_feat`` ``(C, h', w')``: ``pred_xy`` equals :func:`match` on the same inputs, the
    heat-map is :func:`cosine_maps` of the point's descriptor, the candidates :func:`top_k_peaks` of it."""
    _check_method(matcher)
    point = torch.as_tensor(np.asarray(xy, dtype=np.float64).reshape(1, 2), dtype=torch.float32)
    point = point.clamp(0, img_size - 1).to(src_feat.device)
    pred = match(src_feat, trg_feat, point, img_size, matcher)[0]
    heat = cosine_maps(sample_descriptors(src_feat, pixel_to_grid(point, img_size, tuple(src_feat.shape[1:]))),
                       trg_feat)[0]
    cells, scores = top_k_peaks(heat, k, min_distance)
    top_xy = grid_to_pixel(torch.as_tensor(cells, dtype=torch.float32), img_size, tuple(trg_feat.shape[1:]))
    return ClickResult(prompt=prompt, src_xy=point[0].cpu().double().numpy(), pred_xy=pred.cpu().double().numpy(),
                       heatmap=heat.cpu().numpy(), topk_xy=top_xy.double().numpy(), topk_score=scores,
                       matcher=matcher, img_size=int(img_size))


def explore_click(features: Mapping[str, tuple[Tensor, Tensor]], xy, img_size: int,
                  matcher: str = "kernel_softmax", k: int = 5, min_distance: int = 1) -> dict[str, ClickResult]:
    """:func:`click_to_match` for every prompt: ``{label: (src (C, h, w), trg (C, h, w))}`` → ``{label: result}``."""
    return {label: click_to_match(src, trg, xy, img_size, matcher, k, min_distance, prompt=label)
            for label, (src, trg) in features.items()}
