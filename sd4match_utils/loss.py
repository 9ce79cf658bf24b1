"""Training objective: Gaussian-window cross-entropy on the target probability map (SPEC §5).

Per keypoint: ``p = softmax(S / β)``, ``S`` the cosine map of the source descriptor (as in ``matching``), ``g`` the
ground truth on the target grid; the loss is ``−Σ_valid G(o)·log p(g + o)`` over the ``window²`` whole-cell offsets
``o``, ``G(o) = exp(−|o|²/2σ²)/(2πσ²)`` (not renormalised), a point valid when strictly inside the grid (float64,
:data:`BORDER_TOL`). ``log p(q)``, of the bilinear sample of ``p``, is computed in log space: finite where ``p``
underflows. A pair's loss divides by its number of valid keypoints; the batch loss averages the pairs with one.
Keypoints get no gradient; everything runs in float32 whatever the feature dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .checks import FEAT, POINTS, check_mask, check_shape, same_batching
from .matching import bilinear_corners, cosine_maps, pixel_to_grid, sample_descriptors

__all__ = ["BETA", "WINDOW", "SIGMA", "BORDER_TOL", "gaussian_window", "pair_loss", "batch_loss"]

#: Softmax temperature of the probability map (SPEC §5).
BETA = 0.04
#: Side of the square Gaussian window, in cells (SPEC §5).
WINDOW = 7
#: Standard deviation of the Gaussian window, in cells (SPEC §5).
SIGMA = 1.5
#: Window points closer than this (in cells) to the border count as on it (``767 · 47/767`` need not be ``47``).
BORDER_TOL = 1e-6


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> tuple[Tensor, Tensor]:
    """float32 offsets ``(dx, dy)`` (whole cells, row-major: ``dy`` outer, centre at ``size² // 2``) and weights
    ``exp(−(dx² + dy²)/(2σ²)) / (2πσ²)`` of the square window, not renormalised (sum ≈ 0.965 for 7 and 1.5).

    Shape:
        - offsets: :math:`(K, 2)` with :math:`K = size^2`
        - weights: :math:`(K)`
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


def _check_hyper(beta: float, window: int, sigma: float) -> tuple[Tensor, Tensor]:
    """Validate the hyper-parameters; returns the Gaussian window (float32 offsets and weights)."""
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be positive, got {beta!r}")
    return gaussian_window(window, sigma)


def _loss_terms(src_feat: Tensor, trg_feat: Tensor, src_kps: Tensor, trg_kps: Tensor, real: Tensor,
                img_size: int | tuple[int, int], beta: float, offsets: Tensor,
                weights: Tensor) -> tuple[Tensor, Tensor]:
    """``(B,)`` float32 summed keypoint losses (graph-connected) and ``(B,)`` int64 valid keypoint counts.

    Maps ``(B, C, h, w)``, keypoints ``(B, N, 2)`` in pixels, ``real`` ``(B, N)``, window ``(K, 2)`` and ``(K,)``.
    """
    b, n = src_kps.shape[:2]
    device = trg_feat.device
    if n == 0:  # a zero connected to both maps' graphs, so that backward works
        zero = (src_feat.sum() * 0).float() + (trg_feat.sum() * 0).float().to(src_feat.device)
        return zero.to(device).expand(b), torch.zeros(b, dtype=torch.long, device=device)
    h, w = trg_feat.shape[-2:]
    real_src = real.to(src_feat.device)[..., None]
    real = real.to(device)

    # log-probability maps (B, N, h·w); padded keypoints sit at pixel 0, so no NaN reaches the gradient
    src_kps = src_kps.detach().to(device=src_feat.device, dtype=torch.float64)
    src_xy_f = pixel_to_grid(torch.where(real_src, src_kps, torch.zeros_like(src_kps)), img_size, src_feat.shape[-2:])
    desc = sample_descriptors(src_feat, src_xy_f.to(torch.float32))
    logp = torch.log_softmax(cosine_maps(desc, trg_feat).reshape(b, n, h * w) / beta, dim=-1)

    # window points q = g + o, (B, N, K, 2) in float64, and their validity (B, N, K)
    g = pixel_to_grid(trg_kps.detach().to(device=device, dtype=torch.float64), img_size, (h, w))
    q = g[:, :, None, :] + offsets.to(device=device, dtype=torch.float64)
    qx, qy = q[..., 0], q[..., 1]
    valid = (qx > BORDER_TOL) & (qx < w - 1 - BORDER_TOL) & (qy > BORDER_TOL) & (qy < h - 1 - BORDER_TOL)
    valid = valid & real[..., None]

    # log p(q) by log-space bilinear sampling; masked points are moved to a harmless cell
    k = offsets.shape[0]
    x0, x1, y0, y1, fx, fy = bilinear_corners(torch.where(valid[..., None], q, torch.full_like(q, 0.5)), h, w)
    idx = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=-1).reshape(b, n, k * 4)
    corner_w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)  # (B, N, K, 4)
    log_corner_w = torch.log(corner_w).to(torch.float32)  # −inf where a corner has weight 0
    log_pq = torch.logsumexp(log_corner_w + logp.gather(2, idx).reshape(b, n, k, 4), dim=-1)  # (B, N, K)
    log_pq = torch.where(valid, log_pq, torch.zeros_like(log_pq))
    return -(weights.to(device) * log_pq).sum(dim=(1, 2)), valid.any(dim=-1).sum(dim=-1)


def _pair_means(total: Tensor, n_valid: Tensor) -> Tensor:
    """Per-pair loss: ``total / n_valid``, and ``0`` (still graph-connected) where ``n_valid`` is 0."""
    return torch.where(n_valid > 0, total / n_valid.clamp_min(1), torch.zeros_like(total))


def pair_loss(src_feat: Tensor, trg_feat: Tensor, src_kps: Tensor, trg_kps: Tensor, img_size: int | tuple[int, int],
              *, mask: Tensor | None = None, beta: float = BETA, window: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """Gaussian-window cross-entropy of one image pair, or of each pair of a batch; differentiable in the maps.

    Args:
        src_feat, trg_feat: the pair's feature maps (any float dtypes, e.g. bf16; may differ in size).
        src_kps: source keypoints in pixels of the ``img_size`` image (clamped to its border); ``N`` may be 0.
        trg_kps: ground-truth target keypoints (not clamped: a window outside the image keeps its points inside).
        mask: ``True`` for real keypoints, ``False`` for padding; default all real.
        window, sigma: odd side and σ of the Gaussian window, in cells.

    Returns:
        float32 loss of each pair; ``0`` (graph-connected, zero gradients) when no keypoint is valid.

    Shape:
        - src_feat: :math:`(C, h_s, w_s)` or :math:`(B, C, h_s, w_s)`
        - trg_feat: :math:`(C, h, w)` or :math:`(B, C, h, w)`
        - src_kps, trg_kps: :math:`(N, 2)` or :math:`(B, N, 2)`
        - mask: :math:`(N)` or :math:`(B, N)`, boolean
        - Output: :math:`()` or :math:`(B)`; all arguments batched, or none
    """
    flags = (check_shape(src_feat, "src_feat", FEAT, floating=True, min_cells=True),
             check_shape(trg_feat, "trg_feat", FEAT, floating=True, min_cells=True),
             check_shape(src_kps, "src_kps", POINTS), check_shape(trg_kps, "trg_kps", POINTS))
    batched = same_batching(("src_feat", "trg_feat", "src_kps", "trg_kps"), (src_feat, trg_feat, src_kps, trg_kps),
                            flags)
    if src_feat.shape[-3] != trg_feat.shape[-3]:
        raise ValueError(f"src_feat has {src_feat.shape[-3]} channels but trg_feat has {trg_feat.shape[-3]}")
    if src_kps.shape[-2] != trg_kps.shape[-2]:
        raise ValueError(f"src_kps has {src_kps.shape[-2]} keypoints but trg_kps has {trg_kps.shape[-2]}")
    offsets, weights = _check_hyper(beta, window, sigma)
    real = check_mask(mask, src_kps, batched)
    if not batched:
        src_feat, trg_feat, src_kps, trg_kps = src_feat[None], trg_feat[None], src_kps[None], trg_kps[None]
    loss = _pair_means(*_loss_terms(src_feat, trg_feat, src_kps, trg_kps, real, img_size, beta, offsets, weights))
    return loss if batched else loss[0]


def _pad_points(kps: Sequence[Tensor], lengths: Tensor) -> Tensor:
    """``B`` tensors ``(N_b, 2)`` → one zero-padded float64 ``(B, max N_b, 2)`` tensor."""
    rows = [p.detach().to(device=kps[0].device, dtype=torch.float64) for p in kps]
    out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    return out.reshape(len(rows), int(lengths.max()), 2)  # the reshape covers a batch of empty (0, 2) tensors


def _stack_maps(feats: Tensor | Sequence[Tensor], name: str) -> Tensor | None:
    """``(B, C, h, w)`` as given, or a sequence of ``(C, h, w)`` maps stacked (``None`` when their sizes differ)."""
    if isinstance(feats, Tensor):
        check_shape(feats, name, FEAT[1:], floating=True, min_cells=True)
        return feats
    for i, f in enumerate(feats):
        check_shape(f, f"{name}[{i}]", FEAT[:1], floating=True, min_cells=True)
    if len({tuple(f.shape) for f in feats}) > 1 or len({f.device for f in feats}) > 1:
        return None
    if len({f.dtype for f in feats}) > 1:
        feats = [f.to(torch.float32) for f in feats]
    return torch.stack(list(feats))


def batch_loss(src_feats: Tensor | Sequence[Tensor], trg_feats: Tensor | Sequence[Tensor],
               src_kps: Tensor | Sequence[Tensor], trg_kps: Tensor | Sequence[Tensor], img_size: int | tuple[int, int],
               *, mask: Tensor | None = None, **kw) -> Tensor:
    """Mean of :func:`pair_loss` (``kw``: its ``beta``, ``window``, ``sigma``) over a batch, in one pass.

    Pairs without a valid keypoint are left out of the mean (not counted as zero); with none valid the result is a
    graph-connected float32 zero. Keypoints come padded with ``mask``, or as ``B`` tensors that are padded here.

    Shape:
        - src_feats: :math:`(B, C, h_s, w_s)` or ``B`` × :math:`(C, h_s, w_s)`
        - trg_feats: :math:`(B, C, h, w)` or ``B`` × :math:`(C, h, w)`
        - src_kps, trg_kps: :math:`(B, N, 2)` or ``B`` × :math:`(N_b, 2)`
        - mask: :math:`(B, N)`, boolean (tensor keypoints only)
        - Output: :math:`()`
    """
    unknown = set(kw) - {"beta", "window", "sigma"}
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    beta = kw.get("beta", BETA)
    b = len(src_feats)
    if not (len(trg_feats) == len(src_kps) == len(trg_kps) == b):
        raise ValueError(f"batch sizes differ: {b} source maps, {len(trg_feats)} target maps, "
                         f"{len(src_kps)} source and {len(trg_kps)} target keypoint sets")
    if b == 0:
        raise ValueError("empty batch")
    offsets, weights = _check_hyper(beta, kw.get("window", WINDOW), kw.get("sigma", SIGMA))

    if isinstance(src_kps, Tensor) != isinstance(trg_kps, Tensor):
        raise TypeError("src_kps and trg_kps must both be tensors or both be sequences of tensors")
    if isinstance(src_kps, Tensor):
        check_shape(src_kps, "src_kps", POINTS[1:])
        check_shape(trg_kps, "trg_kps", POINTS[1:])
        if src_kps.shape[1] != trg_kps.shape[1]:
            raise ValueError(f"src_kps has {src_kps.shape[1]} keypoints but trg_kps has {trg_kps.shape[1]}")
        real = check_mask(mask, src_kps, True)
    else:
        if mask is not None:
            raise ValueError("mask goes with padded (B, N, 2) keypoint tensors; sequences are padded here")
        for i, (s, t) in enumerate(zip(src_kps, trg_kps)):
            check_shape(s, f"src_kps[{i}]", POINTS[:1])
            check_shape(t, f"trg_kps[{i}]", POINTS[:1])
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"pair {i}: {s.shape[0]} source but {t.shape[0]} target keypoints")
        lengths = torch.tensor([p.shape[0] for p in src_kps])
        real = (torch.arange(int(lengths.max())) < lengths[:, None]).to(src_kps[0].device)  # (B, N)
        src_kps, trg_kps = _pad_points(src_kps, lengths), _pad_points(trg_kps, lengths)

    src, trg = _stack_maps(src_feats, "src_feats"), _stack_maps(trg_feats, "trg_feats")
    if src is not None and trg is not None:
        if src.shape[1] != trg.shape[1]:
            raise ValueError(f"src_feats have {src.shape[1]} channels but trg_feats have {trg.shape[1]}")
        total, n_valid = _loss_terms(src, trg, src_kps, trg_kps, real, img_size, beta, offsets, weights)
    else:  # maps of different sizes cannot be stacked: one pass per pair (not the training path)
        terms = [_loss_terms(s[None], t[None], src_kps[i : i + 1], trg_kps[i : i + 1], real[i : i + 1], img_size,
                             beta, offsets, weights) for i, (s, t) in enumerate(zip(src_feats, trg_feats))]
        total = torch.cat([t.to(terms[0][0].device) for t, _ in terms])
        n_valid = torch.cat([v.to(terms[0][1].device) for _, v in terms])
    # pairs without a valid keypoint add an exact 0 to the sum and nothing to the count, with no host sync
    return _pair_means(total, n_valid).sum() / (n_valid > 0).sum().clamp_min(1)
