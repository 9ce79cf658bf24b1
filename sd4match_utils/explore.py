"""One clicked source point under each prompt: the matcher's prediction, the point's cosine heat-map against the
target and the best distinct cells of that map (what the explorer of :mod:`~sd4match_utils.widgets` shows, and
notebook 01 draws per up-block)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .matching import cosine_maps, grid_to_pixel, match, pixel_to_grid, sample_descriptors

__all__ = ["ClickResult", "click_to_match", "explore_click", "top_k_peaks"]


def top_k_peaks(heatmap: Tensor | np.ndarray, k: int = 5, min_distance: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest cells of a map, greedily skipping cells within ``min_distance`` cells (Chebyshev) of one
    already taken (``0``: the plain top-k); fewer when the map runs out of cells.

    Returns:
        ``(cells, scores)``: int64 ``(x, y)`` cells and float64 scores, best first (ties in row-major order).

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
    """One prompt's answer to one click, in ``img_size`` pixels: the point ``src_xy`` ``(2,)``, the prediction
    ``pred_xy`` ``(2,)``, the point's cosine similarity with every target cell ``heatmap`` ``(h, w)``, and the best
    candidate cells' centres ``topk_xy`` ``(k, 2)`` (best first) with their similarities ``topk_score`` ``(k,)``."""

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
    """Match one source point (clamped to the image): ``pred_xy`` is :func:`match`'s, the heat-map
    :func:`cosine_maps` of the point's descriptor, the candidates its :func:`top_k_peaks`.

    Shape:
        - src_feat: :math:`(C, h, w)`; trg_feat: :math:`(C, h', w')`; xy: :math:`(2)`
        - Output: a :class:`ClickResult` (``heatmap`` :math:`(h', w')`, ``topk_xy`` :math:`(k', 2)`)
    """
    point = torch.as_tensor(np.asarray(xy, dtype=np.float64).reshape(1, 2), dtype=torch.float32)
    point = point.clamp(0, img_size - 1).to(src_feat.device)
    pred = match(src_feat, trg_feat, point, img_size, matcher)[0]  # match() does not expose its similarity map
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
