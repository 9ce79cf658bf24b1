"""What every plot shares: image and point conversion, axes and figure handling, reproducible atomic saving."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from ..cache import atomic_write_bytes

#: Resolution of every saved raster figure.
DPI = 100
#: Colours of a correct prediction, a wrong one and the ground truth.
OK, WRONG, GT = "#1a9850", "#d73027", "#ffd92f"


def to_numpy(x, dtype=np.float64) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=dtype)


def resized(image, img_size: int | None) -> np.ndarray:
    """A PIL image (or ``(H, W, 3)`` array) as an RGB uint8 array, resized to ``img_size × img_size`` if given."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if img_size is not None and image.size != (img_size, img_size):
        image = image.resize((int(img_size), int(img_size)), Image.BILINEAR)
    return np.asarray(image)


def as_points(xy, name: str) -> np.ndarray:
    """``(2,)`` or ``(N, 2)`` points as a float64 ``(N, 2)`` array."""
    arr = to_numpy(xy)
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (2,) or (N, 2), got {arr.shape}")
    return arr


def upsample_map(sim, size: int) -> np.ndarray:
    """``(h, w)`` map → ``(size, size)``, bilinear, align corners (cell ``j`` at pixel ``j·(size−1)/(w−1)``)."""
    t = torch.as_tensor(to_numpy(sim, np.float32))
    if t.ndim != 2:
        raise ValueError(f"similarity map must have shape (h, w), got {tuple(t.shape)}")
    return F.interpolate(t[None, None], size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def axes_grid(axes, nrows: int, ncols: int, what: str, panel: float = 2.6, **kw) -> tuple[Figure, np.ndarray]:
    """The given ``axes`` (any shape, ``nrows · ncols`` of them) as an ``(nrows, ncols)`` array with their figure;
    a new figure of ``panel``-inch panels (``kw`` for :func:`plt.subplots`) when ``axes`` is ``None``."""
    if axes is None:
        return plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows), squeeze=False, **kw)
    flat = np.ravel(np.asarray(axes, dtype=object))
    if flat.size != nrows * ncols:
        raise ValueError(f"{what} needs {nrows * ncols} axes, got {flat.size}")
    return flat[0].figure, flat.reshape(nrows, ncols)


def frame(ax, width: int, height: int) -> None:
    """Show exactly the ``width × height`` pixels of an image, without ticks."""
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set(xticks=[], yticks=[])


def show_pair(ax, sample, s: int) -> None:
    """``sample``'s source | target images side by side at ``s × s`` each, a white line between them."""
    ax.imshow(np.concatenate([resized(sample.src_image, s), resized(sample.trg_image, s)], axis=1))
    ax.axvline(s - 0.5, color="white", linewidth=1.0, gid="separator")
    frame(ax, 2 * s, s)


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
    """Write ``fig`` reproducibly (no time stamps or versions, fixed SVG hash salt) and atomically; returns the path.

    The format follows the suffix: ``.png`` (also added when there is none), ``.pdf`` or ``.svg``.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    path = path if path.suffix else path.with_suffix(".png")
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None},
                "svg": {"Date": None}}.get(fmt)
    if metadata is None:
        raise ValueError(f"unsupported figure format {fmt!r}; use .png, .pdf or .svg")
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "sd4match"}):
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata, facecolor="white")
    return atomic_write_bytes(path, buf.getvalue())
