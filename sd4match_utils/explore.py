"""One clicked point, every prompt: the prediction, the cosine heat-map and the best candidate cells.

This is what the quick-start explorer (:mod:`~sd4match_utils.widgets`) shows when a point of the source image is
clicked, and what notebook 01 draws per up-block: :func:`click_to_match` matches the point with one of the
matchers of :mod:`~sd4match_utils.matching`, its heat-map is the point's cosine map against the target, and
:func:`top_k_peaks` lists the best distinct cells of that map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .matching import cosine_maps, grid_to_pixel, match, pixel_to_grid, sample_descriptors

__all__ = ["ClickResult", "click_to_match", "explore_click", "top_k_peaks"]


def top_k_peaks(heatmap: Tensor | np.ndarray, k: int = 5, min_distance: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest cells of a ``(h, w)`` map, greedily skipping cells within ``min_distance`` cells
    (Chebyshev) of a cell already taken, so the candidates are distinct places rather than neighbours of the best
    one (``min_distance=0``: the plain top-k; fewer than ``k`` when the map runs out of cells).

    Returns:
        ``(cells, scores)``: int64 ``(x, y)`` cell coordinates and float64 scores, sorted by score (highest
        first, ties by row-major cell order).

    Shape:
        - heatmap: :math:`(h, w)`
        - Output: :math:`(k', 2)` and :math:`(k')`, :math:`k' ≤ k`
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
    heat-map is :func:`cosine_maps` of the point's descriptor, the candidates :func:`top_k_peaks` of it.

    Shape:
        - src_feat: :math:`(C, h, w)`; trg_feat: :math:`(C, h', w')`; xy: :math:`(2)`
        - Output: a :class:`ClickResult` (``heatmap`` :math:`(h', w')`, ``topk_xy`` :math:`(k', 2)`)
    """
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
    """:func:`click_to_match` for every prompt: ``{label: (src, trg)}`` → ``{label: result}``.

    Shape:
        - features: each value a pair :math:`(C, h, w)`, :math:`(C, h', w')`; xy: :math:`(2)`
        - Output: one :class:`ClickResult` per label
    """
    return {label: click_to_match(src, trg, xy, img_size, matcher, k, min_distance, prompt=label)
            for label, (src, trg) in features.items()}
