"""What every plot shares: image and point conversion, figure finishing, reproducible atomic saving."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from ..cache import atomic_write_bytes

#: Resolution of every saved raster figure.
DPI = 100
#: Colours of a correct prediction, a wrong one and the ground truth.
OK, WRONG, GT = "#1a9850", "#d73027", "#ffd92f"


def resized(image, img_size: int | None) -> np.ndarray:
    """A PIL image (or ``(H, W, 3)`` array) as an RGB uint8 array resized to ``img_size × img_size`` (if given)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if img_size is not None and image.size != (img_size, img_size):
        image = image.resize((int(img_size), int(img_size)), Image.BILINEAR)
    return np.asarray(image)


def as_points(xy, name: str) -> np.ndarray:
    """``(2,)`` or ``(N, 2)`` points as a float64 ``(N, 2)`` array."""
    if isinstance(xy, torch.Tensor):
        xy = xy.detach().cpu().numpy()
    arr = np.asarray(xy, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (2,) or (N, 2), got {arr.shape}")
    return arr


def upsample_map(sim, size: int) -> np.ndarray:
    """``(h, w)`` map → ``(size, size)`` bilinear, align corners (cell ``j`` sits at pixel ``j·(size−1)/(w−1)``)."""
    t = torch.as_tensor(np.asarray(sim.detach().cpu() if isinstance(sim, torch.Tensor) else sim), dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"similarity map must have shape (h, w), got {tuple(t.shape)}")
    return F.interpolate(t[None, None], size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def new_axes(nrows: int, ncols: int, panel: float = 2.6, **kw) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows), squeeze=False, **kw)
    return fig, axes


def flat_axes(axes, n: int, what: str) -> list[Axes]:
    flat = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(flat) != n:
        raise ValueError(f"{what} needs {n} axes, got {len(flat)}")
    return flat


def finish(fig: Figure, save, title: str | None = None, own: bool = True) -> Figure:
    """Add the figure title, tidy the layout of a figure the function made itself, save when asked."""
    if title:
        fig.suptitle(title, fontsize=10)
    if own:
        fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig


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
