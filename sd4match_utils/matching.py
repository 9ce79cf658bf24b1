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

Batches. The tensor functions take either one pair (feature maps ``(C, h, w)``, points ``(N, 2)``) or a batch
of pairs (maps ``(B, C, h, w)``, points ``(B, N, 2)``, optionally a boolean ``(B, N)`` mask of the real points
when pairs have different keypoint counts and are padded); a batch is computed in one pass, without a loop over
its pairs, and gives for each pair what the single-pair call gives. One pair in, one pair out: the unbatched
forms return unbatched results. Every public function states its shapes in a ``Shape:`` section.

All computations run in float32 on the device of the inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import DESC, FEAT, MASK, POINTS, check_mask, check_shape, same_batching

__all__ = ["MATCHERS", "EPS", "pixel_to_grid", "grid_to_pixel", "sample_descriptors", "l2_normalize", "cosine_maps",
           "match", "match_all", "bilinear_corners"]

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


def _scale(xy: Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Tensor:
    """Map ``(..., 2)`` points between two align-corners grids of ``(H, W)`` sizes ``from_hw`` and ``to_hw``."""
    if not xy.is_floating_point():
        xy = xy.to(torch.float32)
    sx = (to_hw[1] - 1) / (from_hw[1] - 1)
    sy = (to_hw[0] - 1) / (from_hw[0] - 1)
    return xy * torch.tensor([sx, sy], dtype=xy.dtype, device=xy.device)


def pixel_to_grid(xy: Tensor, img_size: int | tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Pixel coordinates → feature-grid coordinates (align corners).

    Args:
        xy: points ``(x, y)`` in an image of ``img_size`` pixels.
        img_size: image side (square image) or ``(H, W)``.
        grid_hw: feature map size ``(h, w)``.

    Returns:
        grid coordinates ``x_f = x · (w − 1)/(W − 1)``, ``y_f = y · (h − 1)/(H − 1)``; floating inputs keep
        their dtype, integer inputs become float32.

    Shape:
        - xy: :math:`(N, 2)` or :math:`(B, N, 2)`
        - Output: same as ``xy``
    """
    check_shape(xy, "xy", POINTS)
    return _scale(xy, _hw(img_size, "img_size"), _hw(grid_hw, "grid_hw"))


def grid_to_pixel(xy_f: Tensor, img_size: int | tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Feature-grid coordinates → pixel coordinates; the inverse of :func:`pixel_to_grid`.

    Args:
        xy_f: grid coordinates ``(x_f, y_f)``.
        img_size: image side (square image) or ``(H, W)``.
        grid_hw: feature map size ``(h, w)``.

    Returns:
        pixel coordinates ``x = x_f · (W − 1)/(w − 1)``, ``y = y_f · (H − 1)/(h − 1)``.

    Shape:
        - xy_f: :math:`(N, 2)` or :math:`(B, N, 2)`
        - Output: same as ``xy_f``
    """
    check_shape(xy_f, "xy_f", POINTS)
    return _scale(xy_f, _hw(grid_hw, "grid_hw"), _hw(img_size, "img_size"))


def bilinear_corners(xy_f: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Integer corners and fractional weights of continuous grid points, clamped inside the grid.

    Used where the four corners are needed one by one (the ``bilinear`` matcher and the log-space sample of
    the loss); plain sampling goes through :func:`sample_descriptors`.

    Args:
        xy_f: ``(..., 2)`` float grid coordinates (the arithmetic keeps their dtype).

    Returns:
        ``x0, x1, y0, y1`` (``(...)`` long, ``x1 = x0 + 1``) and ``fx, fy`` (``(...)`` float in ``[0, 1]``) with
        the clamped point equal to ``((1 − fx)·x0 + fx·x1, (1 − fy)·y0 + fy·y1)``.
    """
    x = xy_f[..., 0].clamp(0, w - 1)
    y = xy_f[..., 1].clamp(0, h - 1)
    x0 = x.floor().clamp(0, w - 2)
    y0 = y.floor().clamp(0, h - 2)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    return x0, x0 + 1, y0, y0 + 1, fx, fy


def sample_descriptors(feat: Tensor, xy_f: Tensor) -> Tensor:
    """Bilinearly sample a feature map at continuous grid points (align corners).

    This is ``grid_sample(feat, ·, mode="bilinear", padding_mode="border", align_corners=True)``: points outside
    the grid are clamped to its border, and at a point ``(x_f, y_f)`` with corners ``x0 = ⌊x_f⌋``,
    ``y0 = ⌊y_f⌋`` the result is ``Σ (1 − |x_f − x_i|)(1 − |y_f − y_i|)·feat[:, y_i, x_i]`` over the four
    corners. The interpolation runs in float64 (in float32, ``grid_sample``'s normalised coordinates would move a
    point by up to ~2e-6 cells on a 48-cell map), so the result is the float32 rounding of the exact bilinear
    value and an integer point gives its cell's vector exactly.

    Args:
        feat: feature map (any float dtype; interpolated in float64, returned in float32).
        xy_f: grid coordinates ``(x_f, y_f)``.

    Returns:
        float32 descriptors.

    Shape:
        - feat: :math:`(C, h, w)` or :math:`(B, C, h, w)`
        - xy_f: :math:`(N, 2)` or :math:`(B, N, 2)` (batched together with ``feat``)
        - Output: :math:`(N, C)` or :math:`(B, N, C)`
    """
    batched = same_batching(
        ("feat", "xy_f"),
        (feat, xy_f),
        (check_shape(feat, "feat", FEAT, min_cells=True), check_shape(xy_f, "xy_f", POINTS)),
    )
    feat4 = (feat if batched else feat[None]).to(torch.float64)
    pts = (xy_f if batched else xy_f[None]).to(device=feat4.device, dtype=torch.float64)
    h, w = feat4.shape[-2:]
    grid = (pts / pts.new_tensor([w - 1, h - 1]) * 2 - 1)[:, None]  # (B, 1, N, 2) in [-1, 1]
    out = F.grid_sample(feat4, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (B, C, 1, N)
    out = out[:, :, 0].transpose(1, 2).to(torch.float32)  # (B, N, C)
    return out if batched else out[0]


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / (‖x‖₂ + 1e-6)`` along ``dim`` (SPEC §2; not ``F.normalize``, which clamps the norm instead).

    Shape:
        - x: any
        - Output: same as ``x``
    """
    return x / (x.norm(dim=dim, keepdim=True) + EPS)


def cosine_maps(src_desc: Tensor, trg_feat: Tensor) -> Tensor:
    """Cosine similarity of each source descriptor with every target cell.

    Args:
        src_desc: source descriptors.
        trg_feat: target feature map.

    Returns:
        float32 similarities, each vector divided by ``(its L2 norm + 1e-6)``, on the device of ``trg_feat``.

    Shape:
        - src_desc: :math:`(N, C)` or :math:`(B, N, C)`
        - trg_feat: :math:`(C, h, w)` or :math:`(B, C, h, w)` (batched together with ``src_desc``)
        - Output: :math:`(N, h, w)` or :math:`(B, N, h, w)`
    """
    batched = same_batching(
        ("src_desc", "trg_feat"),
        (src_desc, trg_feat),
        (check_shape(src_desc, "src_desc", DESC), check_shape(trg_feat, "trg_feat", FEAT, min_cells=True)),
    )
    c, h, w = trg_feat.shape[-3:]
    if src_desc.shape[-1] != c:
        raise ValueError(f"src_desc has {src_desc.shape[-1]} channels but trg_feat has {c}")
    trg = trg_feat if batched else trg_feat[None]
    src = src_desc if batched else src_desc[None]
    trg = l2_normalize(trg.to(torch.float32).reshape(trg.shape[0], c, h * w), dim=1)
    src = l2_normalize(src.to(device=trg.device, dtype=torch.float32), dim=-1)
    out = src @ trg
    out = out.reshape(trg.shape[0], -1, h, w)
    return out if batched else out[0]


# --------------------------------------------------------------------------------------------------------------
# matchers on similarity maps; all take (B, N, ...) batches and return (B, N, 2) grid coordinates of the target
# --------------------------------------------------------------------------------------------------------------


def _cell_grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(h·w,)`` x and y coordinates of the cells in row-major order."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return xs.reshape(-1), ys.reshape(-1)


def _index_xy(idx: Tensor, w: int) -> Tensor:
    """Row-major cell indices ``(...)`` → float32 ``(..., 2)`` cell coordinates ``(x, y)``."""
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1).to(torch.float32)


def _argmax_xy(sim: Tensor) -> Tensor:
    """``(B, N, h, w)`` maps → ``(B, N, 2)`` float32 ``(x, y)`` of each map's argmax (first one on ties)."""
    return _index_xy(sim.flatten(-2).argmax(dim=-1), sim.shape[-1])


def _expected_xy(logits: Tensor) -> Tensor:
    """``(B, N, h, w)`` logits → ``(B, N, 2)`` expected ``(x, y)`` under ``softmax`` over each whole map."""
    h, w = logits.shape[-2:]
    prob = torch.softmax(logits.flatten(-2), dim=-1)
    xs, ys = _cell_grid(h, w, logits.device)
    return torch.stack([prob @ xs, prob @ ys], dim=-1)


def _softmax_match(sim: Tensor, beta: float) -> Tensor:
    return _expected_xy(sim / beta)


def _kernel_softmax_match(sim: Tensor, beta: float, sigma: float, peak: Tensor) -> Tensor:
    h, w = sim.shape[-2:]
    xs, ys = _cell_grid(h, w, sim.device)
    d2 = (xs - peak[..., :1]) ** 2 + (ys - peak[..., 1:]) ** 2  # (B, N, h·w)
    kernel = torch.exp(-d2 / (2.0 * sigma**2)).reshape(sim.shape)
    return _expected_xy(sim * kernel / beta)


def _window_softargmax_match(sim: Tensor, beta: float, window: int, peak: Tensor) -> Tensor:
    h, w = sim.shape[-2:]
    xs, ys = _cell_grid(h, w, sim.device)
    inside = ((xs - peak[..., :1]).abs() <= window) & ((ys - peak[..., 1:]).abs() <= window)  # (B, N, h·w)
    logits = (sim / beta).masked_fill(~inside.reshape(sim.shape), float("-inf"))
    return _expected_xy(logits)


def _bilinear_match(src_feat: Tensor, trg_feat: Tensor, src_xy_f: Tensor) -> Tensor:
    """Blend the ``nn`` matches of the 4 integer neighbours of each source location (see module doc).

    ``src_feat`` ``(B, C, h, w)``, ``trg_feat`` ``(B, C, h', w')``, ``src_xy_f`` ``(B, N, 2)`` → ``(B, N, 2)``.
    The corners are whole cells, so their descriptors are gathered rather than interpolated.
    """
    b, c, h, w = src_feat.shape
    n = src_xy_f.shape[1]
    x0, x1, y0, y1, fx, fy = bilinear_corners(src_xy_f, h, w)
    corners = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=-1).reshape(b, 4 * n)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)  # (B, N, 4)
    flat = src_feat.reshape(b, c, h * w)
    desc = flat.gather(2, corners[:, None, :].expand(b, c, 4 * n)).transpose(1, 2)  # (B, 4N, C)
    pred = _argmax_xy(cosine_maps(desc, trg_feat)).reshape(b, n, 4, 2)
    return (weights[..., None] * pred).sum(dim=2)


def _mutual_nn_match(
    src_feat: Tensor, trg_feat: Tensor, src_xy_f: Tensor, sim: Tensor, radius: float, nn_xy: Tensor
) -> Tensor:
    """Best-scoring target cell whose backward nearest neighbour lies within ``radius`` of the source point.

    ``src_feat`` ``(B, C, h, w)``, ``trg_feat`` ``(B, C, h', w')``, ``src_xy_f`` ``(B, N, 2)``, ``sim``
    ``(B, N, h', w')``, ``nn_xy`` ``(B, N, 2)`` → ``(B, N, 2)``.
    """
    b, c, h, w = src_feat.shape
    wt = trg_feat.shape[-1]
    # backward nearest neighbour of every target cell among the source cells: (B, h'·w') index into h·w
    src_cells = l2_normalize(src_feat.reshape(b, c, h * w), dim=1)
    trg_cells = l2_normalize(trg_feat.reshape(b, c, -1), dim=1)
    back_xy = _index_xy((trg_cells.transpose(1, 2) @ src_cells).argmax(dim=-1), w)  # (B, h'·w', 2)
    # (B, N, h'·w'), exact (no cdist mm)
    d2 = ((src_xy_f[:, :, None, :] - back_xy[:, None, :, :]) ** 2).sum(dim=-1)
    candidate = d2 <= radius**2 + 1e-6
    scores = sim.flatten(-2).masked_fill(~candidate, float("-inf"))
    best_xy = _index_xy(scores.argmax(dim=-1), wt)
    return torch.where(candidate.any(dim=-1, keepdim=True), best_xy, nn_xy)


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
    mask: Tensor | None = None,
    beta: float = 0.04,
    kernel_sigma: float = 7.0,
    window: int = 3,
    mnn_radius: float = 1.5,
) -> dict[str, Tensor]:
    """Transfer source keypoints to the target with several matchers, sharing the similarity maps.

    A batch of pairs is matched in one pass; each pair's rows equal what the single-pair call gives.

    Args:
        src_feat: source feature map(s) (any float dtype; computed in float32).
        trg_feat: target feature map(s) of the same pair(s).
        src_kps: source keypoints ``(x, y)`` in pixels of the ``img_size`` image (points outside the image are
            clamped to its border).
        img_size: side of the (square) resized images, or ``(H, W)``; all images share it.
        methods: matcher names (see :data:`MATCHERS`), or a single name.
        mask: ``True`` for real keypoints, ``False`` for padding (pairs with fewer keypoints than ``N``);
            default all real. Padded rows of the outputs are NaN.
        beta: softmax temperature of ``softmax``, ``kernel_softmax`` and ``window_softargmax``.
        kernel_sigma: Gaussian σ in cells of ``kernel_softmax``.
        window: half-size in cells of the ``window_softargmax`` window.
        mnn_radius: radius in source cells of the ``mutual_nn`` consistency check.

    Returns:
        ``{method: float32 predictions (x, y) in target pixels of the img_size image}``, on the device of
        ``trg_feat``.

    Shape:
        - src_feat: :math:`(C, h, w)` or :math:`(B, C, h, w)`
        - trg_feat: :math:`(C, h', w')` or :math:`(B, C, h', w')`
        - src_kps: :math:`(N, 2)` or :math:`(B, N, 2)`
        - mask: :math:`(N)` or :math:`(B, N)`, boolean
        - Output: each value :math:`(N, 2)` or :math:`(B, N, 2)`; all arguments batched, or none

    Raises:
        ValueError: on bad shapes, an unknown method name or a non-positive ``beta`` / ``kernel_sigma``.
    """
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    for m in methods:
        _check_method(m)
    batched = same_batching(
        ("src_feat", "trg_feat", "src_kps"),
        (src_feat, trg_feat, src_kps),
        (
            check_shape(src_feat, "src_feat", FEAT, min_cells=True),
            check_shape(trg_feat, "trg_feat", FEAT, min_cells=True),
            check_shape(src_kps, "src_kps", POINTS),
        ),
    )
    if src_feat.shape[-3] != trg_feat.shape[-3]:
        raise ValueError(f"src_feat has {src_feat.shape[-3]} channels but trg_feat has {trg_feat.shape[-3]}")
    if src_feat.device != trg_feat.device:
        raise ValueError(f"src_feat is on {src_feat.device} but trg_feat is on {trg_feat.device}")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be positive, got {beta}")
    if not (kernel_sigma > 0):
        raise ValueError(f"kernel_sigma must be positive, got {kernel_sigma}")
    if int(window) != window or window < 0:
        raise ValueError(f"window must be a non-negative integer, got {window}")
    if not (mnn_radius >= 0):
        raise ValueError(f"mnn_radius must be non-negative, got {mnn_radius}")
    img_hw = _hw(img_size, "img_size")

    src_feat = (src_feat if batched else src_feat[None]).to(torch.float32)
    trg_feat = (trg_feat if batched else trg_feat[None]).to(torch.float32)
    real = check_mask(mask, src_kps, batched).to(src_feat.device)
    kps = (src_kps if batched else src_kps[None]).to(device=src_feat.device, dtype=torch.float32)
    kps = kps.masked_fill(~real[..., None], 0.0)  # padding: any finite point, its rows are blanked below
    src_hw, trg_hw = tuple(src_feat.shape[-2:]), tuple(trg_feat.shape[-2:])
    src_xy_f = pixel_to_grid(kps, img_hw, src_hw)
    # keypoints a hair outside the image (annotations at x = W) are treated as on its border
    src_xy_f = torch.stack([src_xy_f[..., 0].clamp(0, src_hw[1] - 1), src_xy_f[..., 1].clamp(0, src_hw[0] - 1)], -1)

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
        pred = grid_to_pixel(xy_f, img_hw, trg_hw).masked_fill(~real[..., None], float("nan"))
        out[m] = pred if batched else pred[0]
    return out


def match(
    src_feat: Tensor,
    trg_feat: Tensor,
    src_kps: Tensor,
    img_size: int | tuple[int, int],
    method: str = "kernel_softmax",
    *,
    mask: Tensor | None = None,
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
        src_feat: source feature map(s) (any float dtype; computed in float32).
        trg_feat: target feature map(s).
        src_kps: source keypoints ``(x, y)`` in pixels of the ``img_size`` image.
        img_size: side of the (square) resized images, or ``(H, W)``.
        method: one of :data:`MATCHERS`.
        mask, beta, kernel_sigma, window, mnn_radius: see :func:`match_all`.

    Returns:
        float32 predicted target keypoints ``(x, y)`` in pixels of the ``img_size`` image (NaN rows where
        ``mask`` is ``False``).

    Shape:
        - src_feat: :math:`(C, h, w)` or :math:`(B, C, h, w)`
        - trg_feat: :math:`(C, h', w')` or :math:`(B, C, h', w')`
        - src_kps: :math:`(N, 2)` or :math:`(B, N, 2)`
        - mask: :math:`(N)` or :math:`(B, N)`, boolean
        - Output: :math:`(N, 2)` or :math:`(B, N, 2)`
    """
    _check_method(method)
    return match_all(
        src_feat,
        trg_feat,
        src_kps,
        img_size,
        (method,),
        mask=mask,
        beta=beta,
        kernel_sigma=kernel_sigma,
        window=window,
        mnn_radius=mnn_radius,
    )[method]
