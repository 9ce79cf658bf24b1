"""Reading dataset images: always 8-bit RGB (alpha dropped, as ``PIL.Image.convert("RGB")`` does in the paper's
code), and every failure reported as a :class:`DatasetFormatError`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .base import DatasetFormatError

_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


@contextmanager
def _open(path: str | Path):
    """``Image.open(path)``; a missing file or a read error raise :class:`DatasetFormatError`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "image file not found")
    try:
        with Image.open(path) as img:
            yield img
    except _READ_ERRORS as exc:
        raise DatasetFormatError(path, f"unreadable image ({exc})") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """``(W, H)`` of an image, read from its header only."""
    with _open(path) as img:
        return img.size


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit ``RGB`` (16-bit and 32-bit integer grayscale are rescaled, not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr * 255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL wants palette transparency resolved through RGBA
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully as an ``RGB`` PIL image."""
    with _open(path) as img:
        img.load()
        return to_rgb(img)
