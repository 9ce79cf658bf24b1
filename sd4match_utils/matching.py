"""Keypoint transfer from a source to a target feature map (SPEC §5 and §6).

Points are ``(x, y)``, in *pixels* of the resized ``img_size`` image or in *cells* of an ``h × w`` feature map
(cell ``(i, j)`` at ``x_f = j``, ``y_f = i``), related by align corners: ``x_f = x · (w − 1)/(W − 1)``. Matchers
(rules in :func:`match`) start from the cosine map ``S`` of a source descriptor against every target cell (SPEC §2).
Functions take one pair (maps ``(C, h, w)``, points ``(N, 2)``) or a batch (``(B, C, h, w)``, ``(B, N, 2)``, maybe
a boolean ``(B, N)`` mask of real points), computed in one pass, each pair as its own call; in float32 on the
inputs' device.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import DESC, FEAT, POINTS, check_mask, check_shape, same_batching

__all__ = ["MATCHERS", "EPS", "pixel_to_grid", "grid_to_pixel", "sample_descriptors", "l2_normalize", "cosine_maps",
           "match", "match_all", "bilinear_corners"]

#: Names of the available matchers, in the order they are usually reported.
MATCHERS = ("nn", "bilinear", "softmax", "kernel_softmax", "window_softargmax", "mutual_nn")

#: Added to the L2 norm before dividing (SPEC §2).
EPS = 1e-6


def _hw(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``size`` (an int or an ``(H, W)`` pair) as an ``(H, W)`` pair of ints, each at least 2."""
    pair = (size, size) if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
    try:
        hw = tuple(int(s) for s in pair)  # type: ignore[union-attr]
    except TypeError:
        hw = ()
    if len(hw) != 2:
        raise ValueError(f"{name} must be an int or an (H, W) pair, got {size!r}")
    if min(hw) < 2:
        raise ValueError(f"{name} must be at least 2 along each side, got {size!r}")
    return hw  # type: ignore[return-value]


def _scale(xy: Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Tensor:
    """Map ``(..., 2)`` points between two align-corners grids of ``(H, W)`` sizes ``from_hw`` and ``to_hw``."""
    if not xy.is_floating_point():
        xy = xy.to(torch.float32)
    scale = [(to_hw[1] - 1) / (from_hw[1] - 1), (to_hw[0] - 1) / (from_hw[0] - 1)]
    return xy * torch.tensor(scale, dtype=xy.dtype, device=xy.device)


def pixel_to_grid(xy: Tensor, img_size: int | tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Pixel coordinates → grid coordinates ``x_f = x · (w − 1)/(W − 1)``, ``y_f = y · (h − 1)/(H − 1)``.

    ``img_size`` is the image side or ``(H, W)``, ``grid_hw`` the map's ``(h, w)``. Floating inputs keep their
    dtype, integer inputs become float32.

    Shape:
        - xy: :math:`(N, 2)` or :math:`(B, N, 2)`
        - Output: same as ``xy``
    """
    check_shape(xy, "xy", POINTS)
    return _scale(xy, _hw(img_size, "img_size"), _hw(grid_hw, "grid_hw"))


def grid_to_pixel(xy_f: Tensor, img_size: int | tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """Grid coordinates → pixel coordinates; the inverse of :func:`pixel_to_grid`.

    Shape:
        - xy_f: :math:`(N, 2)` or :math:`(B, N, 2)`
        - Output: same as ``xy_f``
    """
    check_shape(xy_f, "xy_f", POINTS)
    return _scale(xy_f, _hw(grid_hw, "grid_hw"), _hw(img_size, "img_size"))


def bilinear_corners(xy_f: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Integer corners ``x0, x1 = x0 + 1, y0, y1`` (long) and weights ``fx, fy`` in ``[0, 1]`` (dtype of
    ``xy_f``) of grid points clamped inside an ``h × w`` grid: the point is ``((1 − fx)·x0 + fx·x1, ...)``.

    Shape:
        - xy_f: :math:`(..., 2)`
        - Output: six tensors :math:`(...)`
    """
    x = xy_f[..., 0].clamp(0, w - 1)
    y = xy_f[..., 1].clamp(0, h - 1)
    x0 = x.floor().clamp(0, w - 2)
    y0 = y.floor().clamp(0, h - 2)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    return x0, x0 + 1, y0, y0 + 1, fx, fy


def sample_descriptors(feat: Tensor, xy_f: Tensor) -> Tensor:
    """Bilinearly sample a feature map at grid points (align corners, points clamped to the border).

    Runs in float64 (in float32, ``grid_sample``'s normalised coordinates would move a point by up to ~2e-6
    cells), so the float32 result is the rounding of the exact bilinear value and whole cells come out exactly.

    Shape:
        - feat: :math:`(C, h, w)` or :math:`(B, C, h, w)`, any float dtype
        - xy_f: :math:`(N, 2)` or :math:`(B, N, 2)` (batched together with ``feat``)
        - Output: :math:`(N, C)` or :math:`(B, N, C)`, float32
    """
    flags = (check_shape(feat, "feat", FEAT, min_cells=True), check_shape(xy_f, "xy_f", POINTS))
    batched = same_batching(("feat", "xy_f"), (feat, xy_f), flags)
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
    """float32 cosine similarity of each source descriptor with every target cell, on ``trg_feat``'s device.

    Shape:
        - src_desc: :math:`(N, C)` or :math:`(B, N, C)`
        - trg_feat: :math:`(C, h, w)` or :math:`(B, C, h, w)` (batched together with ``src_desc``)
        - Output: :math:`(N, h, w)` or :math:`(B, N, h, w)`
    """
    flags = (check_shape(src_desc, "src_desc", DESC), check_shape(trg_feat, "trg_feat", FEAT, min_cells=True))
    batched = same_batching(("src_desc", "trg_feat"), (src_desc, trg_feat), flags)
    c, h, w = trg_feat.shape[-3:]
    if src_desc.shape[-1] != c:
        raise ValueError(f"src_desc has {src_desc.shape[-1]} channels but trg_feat has {c}")
    trg = trg_feat if batched else trg_feat[None]
    src = src_desc if batched else src_desc[None]
    trg = l2_normalize(trg.to(torch.float32).reshape(trg.shape[0], c, h * w), dim=1)
    src = l2_normalize(src.to(device=trg.device, dtype=torch.float32), dim=-1)
    out = (src @ trg).reshape(trg.shape[0], -1, h, w)
    return out if batched else out[0]


# matchers on (B, N, h', w') similarity maps, giving (B, N, 2) target grid coordinates


def _index_xy(idx: Tensor, w: int) -> Tensor:
    """Row-major cell indices ``(...)`` → float32 ``(..., 2)`` cell coordinates ``(x, y)``."""
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1).to(torch.float32)


def _argmax_xy(sim: Tensor) -> Tensor:
    """``(x, y)`` of each map's argmax (the first one on ties)."""
    return _index_xy(sim.flatten(-2).argmax(dim=-1), sim.shape[-1])


def _expected_xy(logits: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Expected ``(x, y)`` under ``softmax`` over each whole map, of cells at ``xs``, ``ys`` ``(h·w,)``."""
    prob = torch.softmax(logits.flatten(-2), dim=-1)
    return torch.stack([prob @ xs, prob @ ys], dim=-1)


def _bilinear_match(src_feat: Tensor, trg_feat: Tensor, src_xy_f: Tensor) -> Tensor:
    """Blend the ``nn`` matches of the 4 cells around each source point; whole cells, so gathered."""
    b, c, h, w = src_feat.shape
    n = src_xy_f.shape[1]
    x0, x1, y0, y1, fx, fy = bilinear_corners(src_xy_f, h, w)
    corners = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=-1).reshape(b, 4 * n)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)  # (B, N, 4)
    flat = src_feat.reshape(b, c, h * w)
    desc = flat.gather(2, corners[:, None, :].expand(b, c, 4 * n)).transpose(1, 2)  # (B, 4N, C)
    pred = _argmax_xy(cosine_maps(desc, trg_feat)).reshape(b, n, 4, 2)
    return (weights[..., None] * pred).sum(dim=2)


def _mutual_nn_match(src_feat: Tensor, trg_feat: Tensor, src_xy_f: Tensor, sim: Tensor, radius: float,
                     nn_xy: Tensor) -> Tensor:
    """Best-scoring target cell whose backward nearest neighbour lies within ``radius`` of the source point."""
    b, c, h, w = src_feat.shape
    # backward nearest neighbour of every target cell among the source cells: (B, h'·w', 2)
    src_cells = l2_normalize(src_feat.reshape(b, c, h * w), dim=1)
    trg_cells = l2_normalize(trg_feat.reshape(b, c, -1), dim=1)
    back_xy = _index_xy((trg_cells.transpose(1, 2) @ src_cells).argmax(dim=-1), w)
    d2 = ((src_xy_f[:, :, None, :] - back_xy[:, None, :, :]) ** 2).sum(dim=-1)  # (B, N, h'·w'), exact (no cdist)
    candidate = d2 <= radius**2 + 1e-6
    scores = sim.flatten(-2).masked_fill(~candidate, float("-inf"))
    best_xy = _index_xy(scores.argmax(dim=-1), trg_feat.shape[-1])
    return torch.where(candidate.any(dim=-1, keepdim=True), best_xy, nn_xy)


def match_all(src_feat: Tensor, trg_feat: Tensor, src_kps: Tensor, img_size: int | tuple[int, int],
              methods: tuple[str, ...] | list[str] | str = MATCHERS, *, mask: Tensor | None = None, beta: float = 0.04,
              kernel_sigma: float = 7.0, window: int = 3, mnn_radius: float = 1.5) -> dict[str, Tensor]:
    """Transfer source keypoints to the target with several matchers, sharing the similarity maps.

    Args:
        src_feat, trg_feat: the pair's feature maps (any float dtype; computed in float32).
        src_kps: source keypoints in pixels of the ``img_size`` image (clamped to its border).
        img_size: side of the (square) resized images, or ``(H, W)``; all images share it.
        methods: matcher names (see :data:`MATCHERS`), or a single name.
        mask: ``True`` for real keypoints, ``False`` for padding (NaN rows in the outputs); default all real.
        beta: softmax temperature of ``softmax``, ``kernel_softmax`` and ``window_softargmax``.
        kernel_sigma: Gaussian σ in cells of ``kernel_softmax``.
        window: half-size in cells of the ``window_softargmax`` window.
        mnn_radius: radius in source cells of the ``mutual_nn`` consistency check.

    Returns:
        ``{method: float32 predictions (x, y) in target pixels of the img_size image}``, on ``trg_feat``'s device.

    Shape:
        - src_feat: :math:`(C, h, w)` or :math:`(B, C, h, w)`
        - trg_feat: :math:`(C, h', w')` or :math:`(B, C, h', w')`
        - src_kps: :math:`(N, 2)` or :math:`(B, N, 2)`
        - mask: :math:`(N)` or :math:`(B, N)`, boolean
        - Output: each value :math:`(N, 2)` or :math:`(B, N, 2)`; all arguments batched, or none
    """
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    for m in methods:
        if m not in MATCHERS:
            raise ValueError(f"unknown matcher {m!r}; valid ones are: {', '.join(MATCHERS)}")
    flags = (check_shape(src_feat, "src_feat", FEAT, min_cells=True),
             check_shape(trg_feat, "trg_feat", FEAT, min_cells=True), check_shape(src_kps, "src_kps", POINTS))
    batched = same_batching(("src_feat", "trg_feat", "src_kps"), (src_feat, trg_feat, src_kps), flags)
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

    if any(m != "bilinear" for m in methods):
        sim = cosine_maps(sample_descriptors(src_feat, src_xy_f), trg_feat)
        peak = _argmax_xy(sim)
        arange = [torch.arange(n, device=sim.device, dtype=torch.float32) for n in trg_hw]
        ys, xs = (t.reshape(-1) for t in torch.meshgrid(*arange, indexing="ij"))  # cells, row-major
        dx, dy = xs - peak[..., :1], ys - peak[..., 1:]  # (B, N, h'·w') offsets of the cells from the argmax

    out: dict[str, Tensor] = {}
    for m in methods:
        if m == "nn":
            xy_f = peak
        elif m == "bilinear":
            xy_f = _bilinear_match(src_feat, trg_feat, src_xy_f)
        elif m == "softmax":
            xy_f = _expected_xy(sim / beta, xs, ys)
        elif m == "kernel_softmax":
            kernel = torch.exp(-(dx**2 + dy**2) / (2.0 * kernel_sigma**2)).reshape(sim.shape)
            xy_f = _expected_xy(sim * kernel / beta, xs, ys)
        elif m == "window_softargmax":
            inside = (dx.abs() <= int(window)) & (dy.abs() <= int(window))
            xy_f = _expected_xy((sim / beta).masked_fill(~inside.reshape(sim.shape), float("-inf")), xs, ys)
        else:  # mutual_nn
            xy_f = _mutual_nn_match(src_feat, trg_feat, src_xy_f, sim, mnn_radius, peak)
        pred = grid_to_pixel(xy_f, img_hw, trg_hw).masked_fill(~real[..., None], float("nan"))
        out[m] = pred if batched else pred[0]
    return out


def match(src_feat: Tensor, trg_feat: Tensor, src_kps: Tensor, img_size: int | tuple[int, int],
          method: str = "kernel_softmax", *, mask: Tensor | None = None, beta: float = 0.04, kernel_sigma: float = 7.0,
          window: int = 3, mnn_radius: float = 1.5) -> Tensor:
    """Transfer source keypoints to the target image with one matcher (arguments: see :func:`match_all`).

    The source descriptor is the bilinear sample of ``src_feat`` at each keypoint's grid location. Matchers:

    * ``nn``: the argmax cell of the cosine map ``S``.
    * ``bilinear``: each of the 4 cells around the source location (clamped inside the grid) takes its own
      descriptor's ``nn`` match; the 4 matches are blended with the source location's bilinear weights.
    * ``softmax``: expected cell coordinates under ``softmax(S / beta)`` over the whole map.
    * ``kernel_softmax`` (the paper's): ``softmax(S · exp(−d² / (2·kernel_sigma²)) / beta)``, ``d`` the distance in
      cells to the argmax cell, and the expected coordinates.
    * ``window_softargmax``: ``softmax(S / beta)`` restricted to the ``(2·window + 1)²`` cells around the argmax
      (clipped at the borders), expected coordinates.
    * ``mutual_nn``: the best-scoring target cell whose own nearest neighbour in the source map lies within
      ``mnn_radius`` source cells (Euclidean) of the keypoint's source location; ``nn`` when there is none.

    Returns:
        float32 predicted target keypoints ``(x, y)`` in pixels (NaN rows where ``mask`` is ``False``).

    Shape:
        - src_feat: :math:`(C, h, w)` or :math:`(B, C, h, w)`
        - trg_feat: :math:`(C, h', w')` or :math:`(B, C, h', w')`
        - src_kps: :math:`(N, 2)` or :math:`(B, N, 2)`
        - mask: :math:`(N)` or :math:`(B, N)`, boolean
        - Output: :math:`(N, 2)` or :math:`(B, N, 2)`
    """
    return match_all(src_feat, trg_feat, src_kps, img_size, (method,), mask=mask, beta=beta,
                     kernel_sigma=kernel_sigma, window=window, mnn_radius=mnn_radius)[method]
