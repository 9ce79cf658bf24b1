"""Cheap checks of run arguments (before any model loads) and of the tensor shapes of ``matching`` and ``loss``.

Each raises ``ValueError`` with a one-line message naming the offending value or file; the command line turns it
into ``sd4match <command>: error: ...`` and exit code 2.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_device(device: str) -> None:
    """Refuse a device string torch does not know, or a CUDA / MPS device this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {device!r} is not a device (expected cpu, cuda, cuda:N or mps)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported (expected cpu, cuda, cuda:N or mps)")
    backend = {"cuda": torch.cuda, "mps": torch.backends.mps}.get(dev.type)
    if backend is not None and not backend.is_available():
        raise ValueError(f"device {device!r}: {dev.type.upper()} is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_positive(name: str, value, allow_none: bool = False) -> None:
    """Refuse a count that is not an integer >= 1 (``None`` too unless ``allow_none``)."""
    if not (value is None and allow_none) and not (_is_int(value) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_limit(name: str, value) -> None:
    """``None`` (no limit) or an integer >= 0 (0 is refused later, naming the split file: no pairs)."""
    if value is not None and not (_is_int(value) and value >= 0):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def check_img_size(value) -> None:
    """``None`` (the model's native size) or a positive integer."""
    if value is not None and not (_is_int(value) and value > 0):
        raise ValueError(f"img_size must be a positive number of pixels or 'native' (None), got {value!r}")


def check_writable_folder(folder: str | Path, what: str = "--out") -> None:
    """Refuse an output folder that is a file, lies below a file, or where a file cannot be created (in it or
    its nearest existing parent). Creates nothing that stays."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder}: exists and is not a folder")
    base = folder.absolute()
    while not base.exists() and not base.is_symlink() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{what} {folder}: cannot be created, {base} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".sd4match-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{what} {folder}: cannot write in {base} ({e.strerror or e})") from None


def check_writable_file(path: str | Path, what: str = "--out") -> None:
    """Refuse an output file path that is a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a folder, expected a file name")
    check_writable_folder(path.parent, what=f"{what} {path}: folder")


def check_has_pairs(dataset, limit: int | None = None, what: str = "pairs") -> int:
    """The number of pairs to use (``limit`` of them at most); refuses none: ``no pairs in FILE``."""
    check_limit("limit", limit)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        attrs = ("split_file", "csv_path", "annotation_file")  # the file the split was read from, else its root
        source = next((v for a in attrs if (v := getattr(dataset, a, None)) is not None), getattr(dataset, "root", "?"))
        why = f" (limit {limit})" if limit is not None and len(dataset) else ""
        raise ValueError(f"no {what} in {source}{why}")
    return n


#: Accepted layouts of the tensor arguments: (unbatched, batched). Letters name free sizes, digits fix them.
FEAT = ("C h w", "B C h w")
POINTS = ("N 2", "B N 2")
DESC = ("N C", "B N C")
MASK = ("N", "B N")


def check_shape(x: Tensor, name: str, layouts: Sequence[str], *, floating: bool = False,
                min_cells: bool = False) -> bool:
    """Check ``x`` against its accepted ``(unbatched, batched)`` layouts; return whether it is batched.

    Args:
        layouts: layout strings such as ``"C h w"``; one layout means "no batched form".
        floating: also require a floating dtype.
        min_cells: also require the last two sizes (the cells of a feature map) to be at least 2.

    Raises:
        TypeError: ``x`` is not a tensor, or not floating when ``floating``.
        ValueError: ``x`` matches no layout, or has fewer than 2 × 2 cells when ``min_cells``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    for k, layout in enumerate(layouts):
        tokens = layout.split()
        if x.ndim == len(tokens) and all(not t.isdigit() or x.shape[d] == int(t) for d, t in enumerate(tokens)):
            break
    else:
        shapes = " or ".join("(" + ", ".join(layout.split()) + ")" for layout in layouts)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if min_cells and (x.shape[-2] < 2 or x.shape[-1] < 2):
        raise ValueError(f"{name} must be at least 2 × 2 cells, got {tuple(x.shape)}")
    return k == 1


def same_batching(names: Sequence[str], tensors: Sequence[Tensor], flags: Sequence[bool]) -> bool:
    """All of ``tensors`` batched (with one batch size) or none; returns whether they are batched."""
    if len(set(flags)) > 1:
        parts = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, tensors))
        raise ValueError(f"mix of batched and unbatched arguments: {parts}")
    if flags[0] and len({t.shape[0] for t in tensors}) > 1:
        parts = ", ".join(f"{n} {t.shape[0]}" for n, t in zip(names, tensors))
        raise ValueError(f"batch sizes differ: {parts}")
    return flags[0]


def check_mask(mask: Tensor | None, points: Tensor, batched: bool) -> Tensor:
    """The boolean ``(B, N)`` mask of real points (all ``True`` when ``mask`` is ``None``).

    Shape:
        - mask: :math:`(N)` or :math:`(B, N)`
        - points: :math:`(N, 2)` or :math:`(B, N, 2)`
        - Output: :math:`(B, N)` (``B = 1`` when unbatched)
    """
    if mask is None:
        b, n = (points.shape[0], points.shape[1]) if batched else (1, points.shape[0])
        return torch.ones(b, n, dtype=torch.bool, device=points.device)
    if check_shape(mask, "mask", MASK) != batched or tuple(mask.shape) != tuple(points.shape[:-1]):
        raise ValueError(f"mask must have shape {tuple(points.shape[:-1])} (the points' leading sizes), got "
                         f"{tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {mask.dtype}")
    return (mask if batched else mask[None]).to(points.device)
