"""Training objective: Gaussian-window cross-entropy on the target probability map (SPEC §5).

For one image pair and one keypoint:

1. the *source descriptor* is the bilinear (align-corners) sample of the source feature map at the source
   keypoint, mapped to the source grid with ``x_f = x · (w − 1)/(W − 1)``;
2. the *probability map* is ``p = softmax(cos(descriptor, every target cell) / β)`` over all ``h × w`` target
   cells (cosines with each vector divided by ``(its L2 norm + 1e-6)``, as in :mod:`sd4match_utils.matching`);
3. the ground-truth target keypoint is mapped to the target grid the same way, giving a *continuous*
   location ``g``;
4. a ``window × window`` (7 × 7) set of offsets ``o`` (whole cells) is placed around ``g``; each point
   ``q = g + o`` strictly inside the grid (``0 < q_x < w − 1`` and ``0 < q_y < h − 1``) is *valid*; points on
   or outside the border are masked;
5. at each valid ``q`` the probability map is bilinearly sampled, ``p(q) = Σ_corners b_i · p_i``, and the
   keypoint's loss is ``−Σ_valid G(o) · log p(q)`` with ``G(o) = exp(−|o|²/2σ²)/(2πσ²)`` (σ = 1.5 cells,
   not renormalised: ``Σ G ≈ 0.965``).

The pair's loss is the sum over keypoints divided by the number of *valid keypoints* (keypoints with at least
one valid window point); the batch loss is the mean over the pairs that have at least one valid keypoint.

Conventions fixed here:

* ``log p(q)`` is the log of the bilinearly sampled *probability* (not a sample of ``log p``). It is computed
  exactly in log space, ``log p(q) = logsumexp_i(log b_i + log_softmax_i)``, so no clamp is needed: the value
  stays finite and keeps its gradient even where ``p`` underflows float32.
* Window coordinates are computed in float64 and a point counts as "on the border" when it lies within
  ``1e-6`` cells of it, so that rounding in the pixel → grid conversion (``767 · 47/767`` need not be exactly
  ``47``) cannot flip the strict test.
* Keypoints are data: no gradient flows into them. Everything else runs in float32 whatever the feature dtype
  (bf16 / fp16 maps give a float32 loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .matching import _bilinear_corners, cosine_maps, pixel_to_grid, sample_descriptors

__all__ = ["BETA", "WINDOW", "SIGMA", "BORDER_TOL", "gaussian_window", "pair_loss", "batch_loss"]

#: Softmax temperature of the probability map (SPEC §5).
BETA = 0.04
#: Side of the square Gaussian window, in cells (SPEC §5).
WINDOW = 7
#: Standard deviation of the Gaussian window, in cells (SPEC §5).
SIGMA = 1.5
#: Window points closer than this (in cells) to the border count as on it, i.e. are masked.
BORDER_TOL = 1e-6


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> tuple[Tensor, Tensor]:
    """Offsets and weights of the square Gaussian target window.

    Args:
        size: window side in cells (odd, ≥ 1).
        sigma: Gaussian standard deviation in cells (> 0).

    Returns:
        ``offsets``: ``(size², 2)`` float32 ``(dx, dy)`` in whole cells, each from ``−(size // 2)`` to
        ``+(size // 2)``, row-major (``dy`` outer, ``dx`` inner), so the centre ``(0, 0)`` is at index
        ``size² // 2``;
        ``weights``: ``(size²,)`` float32 ``exp(−(dx² + dy²)/(2σ²)) / (2πσ²)``, *not* renormalised (their sum
        is ≈ 0.965 for ``size = 7, sigma = 1.5``).

    Raises:
        ValueError: if ``size`` is not a positive odd integer or ``sigma`` is not positive.
    """
    if isinstance(size, bool) or int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    r = int(size) // 2
    steps = torch.arange(-r, r + 1, dtype=torch.float64)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    offsets = torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)
    weights = torch.exp(-(offsets**2).sum(dim=1) / (2.0 * sigma**2)) / (2.0 * math.pi * sigma**2)
    return offsets.to(torch.float32), weights.to(torch.float32)


# --------------------------------------------------------------------------------------------------------------
# internals
# --------------------------------------------------------------------------------------------------------------


def _check_feat(feat: Tensor, name: str) -> None:
    if not isinstance(feat, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(feat).__name__}")
    if feat.ndim != 3:
        raise ValueError(f"{name} must have shape (C, h, w), got {tuple(feat.shape)}")
    if not feat.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {feat.dtype}")
    if feat.shape[1] < 2 or feat.shape[2] < 2:
        raise ValueError(f"{name} must be at least 2 × 2 cells, got {tuple(feat.shape)}")


def _check_kps(kps: Tensor, name: str) -> None:
    if not isinstance(kps, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(kps).__name__}")
    if kps.ndim != 2 or kps.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {tuple(kps.shape)}")


def _zero(src_feat: Tensor, trg_feat: Tensor) -> Tensor:
    """A float32 scalar zero that is connected to both feature maps' graphs (so ``backward`` works)."""
    return (src_feat.sum() * 0).float() + (trg_feat.sum() * 0).float().to(src_feat.device)


def _pair_terms(
    src_feat: Tensor,
    trg_feat: Tensor,
    src_kps: Tensor,
    trg_kps: Tensor,
    img_size: int | tuple[int, int],
    beta: float,
    window: int,
    sigma: float,
) -> tuple[Tensor, int]:
    """Summed keypoint loss of one pair (float32 scalar, graph-connected) and its number of valid keypoints."""
    _check_feat(src_feat, "src_feat")
    _check_feat(trg_feat, "trg_feat")
    if src_feat.shape[0] != trg_feat.shape[0]:
        raise ValueError(f"src_feat has {src_feat.shape[0]} channels but trg_feat has {trg_feat.shape[0]}")
    _check_kps(src_kps, "src_kps")
    _check_kps(trg_kps, "trg_kps")
    if src_kps.shape[0] != trg_kps.shape[0]:
        raise ValueError(f"src_kps has {src_kps.shape[0]} keypoints but trg_kps has {trg_kps.shape[0]}")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be positive, got {beta!r}")
    offsets, weights = gaussian_window(window, sigma)  # validates window / sigma

    device = trg_feat.device
    n = src_kps.shape[0]
    if n == 0:
        return _zero(src_feat, trg_feat), 0
    _, h, w = trg_feat.shape
    src_hw = tuple(src_feat.shape[1:])

    # 1. source descriptors (N, C) and 2. log-probability maps (N, h·w), float32
    src_xy_f = pixel_to_grid(src_kps.detach().to(device=src_feat.device, dtype=torch.float64), img_size, src_hw)
    desc = sample_descriptors(src_feat, src_xy_f.to(torch.float32))
    logp = torch.log_softmax(cosine_maps(desc, trg_feat).reshape(n, h * w) / beta, dim=1)

    # 3. continuous ground truth on the target grid and 4. window points q = g + o, (N, K, 2) in float64
    g = pixel_to_grid(trg_kps.detach().to(device=device, dtype=torch.float64), img_size, (h, w))
    q = g[:, None, :] + offsets.to(device=device, dtype=torch.float64)[None, :, :]
    qx, qy = q[..., 0], q[..., 1]
    valid = (qx > BORDER_TOL) & (qx < w - 1 - BORDER_TOL) & (qy > BORDER_TOL) & (qy < h - 1 - BORDER_TOL)  # (N, K)
    kp_valid = valid.any(dim=1)  # (N,)
    n_valid = int(kp_valid.sum())
    if n_valid == 0:
        return _zero(src_feat, trg_feat), 0

    # bilinear sample of p at every (valid) q, in log space; masked points are moved to a harmless cell
    k = offsets.shape[0]
    q_safe = torch.where(valid[..., None], q, torch.full_like(q, 0.5)).reshape(n * k, 2)
    x0, x1, y0, y1, fx, fy = _bilinear_corners(q_safe, h, w)
    idx = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=1).reshape(n, k * 4)
    corner_w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)  # (N·K, 4)
    log_corner_w = torch.log(corner_w).to(torch.float32).reshape(n, k, 4)  # −inf where a corner has weight 0
    log_pq = torch.logsumexp(log_corner_w + logp.gather(1, idx).reshape(n, k, 4), dim=2)  # (N, K)

    # 5. −Σ_valid G(o) · log p(q), summed over keypoints
    log_pq = torch.where(valid, log_pq, torch.zeros_like(log_pq))
    total = -(weights.to(device)[None, :] * log_pq).sum()
    return total, n_valid


# --------------------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------------------


def pair_loss(
    src_feat: Tensor,
    trg_feat: Tensor,
    src_kps: Tensor,
    trg_kps: Tensor,
    img_size: int | tuple[int, int],
    *,
    beta: float = BETA,
    window: int = WINDOW,
    sigma: float = SIGMA,
) -> Tensor:
    """Gaussian-window cross-entropy of one image pair (see the module docstring for the rules).

    Differentiable with respect to both feature maps; vectorised over keypoints and window offsets.

    Args:
        src_feat: ``(C, h_s, w_s)`` source feature map (any float dtype, e.g. bf16; computed in float32).
        trg_feat: ``(C, h, w)`` target feature map (may differ in dtype and size from ``src_feat``).
        src_kps: ``(N, 2)`` source keypoints ``(x, y)`` in pixels of the ``img_size`` image (points outside
            it are clamped to the border when sampling the descriptor). ``N`` may be 0.
        trg_kps: ``(N, 2)`` matching ground-truth target keypoints, same coordinates (not clamped: a window
            centred outside the image keeps only its points that fall strictly inside the grid).
        img_size: side of the square resized images, or ``(H, W)``; both images share it.
        beta: softmax temperature (0.04).
        window: odd window side in cells (7).
        sigma: Gaussian σ in cells (1.5).

    Returns:
        float32 scalar: ``Σ_keypoints −Σ_valid G(o)·log p(g + o)`` divided by the number of keypoints with at
        least one valid window point. With no such keypoint (including ``N = 0``) it is ``0``, still connected
        to both maps' graphs so that ``backward()`` works (and gives zero gradients).

    Raises:
        ValueError / TypeError: on bad shapes, mismatched channel or keypoint counts, or bad hyper-parameters.
    """
    total, n_valid = _pair_terms(src_feat, trg_feat, src_kps, trg_kps, img_size, beta, window, sigma)
    return total / n_valid if n_valid else total


def batch_loss(
    src_feats: Tensor | Sequence[Tensor],
    trg_feats: Tensor | Sequence[Tensor],
    src_kps: Sequence[Tensor],
    trg_kps: Sequence[Tensor],
    img_size: int | tuple[int, int],
    **kw,
) -> Tensor:
    """Mean of :func:`pair_loss` over the pairs of a batch.

    Pairs without any valid keypoint (no keypoints, or all windows outside the grid) are *left out* of the
    mean rather than counted as zero, so they do not dilute the loss of the others; if no pair is valid the
    result is a graph-connected float32 zero.

    Args:
        src_feats: ``(B, C, h_s, w_s)`` source maps (or a sequence of ``B`` ``(C, h_s, w_s)`` maps).
        trg_feats: ``(B, C, h, w)`` target maps (or a sequence of ``B`` maps).
        src_kps: ``B`` tensors of shape ``(N_b, 2)``, pixels of the ``img_size`` image (``N_b`` may differ).
        trg_kps: ``B`` tensors of shape ``(N_b, 2)``.
        img_size: side of the square resized images, or ``(H, W)``.
        **kw: ``beta``, ``window``, ``sigma`` of :func:`pair_loss`.

    Returns:
        float32 scalar.
    """
    unknown = set(kw) - {"beta", "window", "sigma"}
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    beta, window, sigma = kw.get("beta", BETA), kw.get("window", WINDOW), kw.get("sigma", SIGMA)
    b = len(src_feats)
    if not (len(trg_feats) == len(src_kps) == len(trg_kps) == b):
        raise ValueError(
            f"batch sizes differ: {b} source maps, {len(trg_feats)} target maps, "
            f"{len(src_kps)} source and {len(trg_kps)} target keypoint sets"
        )
    if b == 0:
        raise ValueError("empty batch")
    losses = []
    zero = None
    for i in range(b):
        total, n_valid = _pair_terms(
            src_feats[i], trg_feats[i], src_kps[i], trg_kps[i], img_size, beta, window, sigma
        )
        if n_valid:
            losses.append(total / n_valid)
        else:
            zero = total if zero is None else zero + total
    if not losses:
        return zero
    out = torch.stack(losses).mean()
    return out if zero is None else out + zero.to(out.device)
