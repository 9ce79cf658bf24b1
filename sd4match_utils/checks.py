"""Cheap checks of run arguments, done before any expensive work (before a model loads).

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


def check_device(device: str) -> None:
    """Refuse a device string torch does not know, or a CUDA / MPS device this machine does not have."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {device!r} is not a device (expected cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available on this machine (use --device cpu)")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported (expected cpu, cuda, cuda:N or mps)")


def check_positive(name: str, value, allow_none: bool = False) -> None:
    """Refuse a count that is not an integer >= 1 (``None`` too unless ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_limit(name: str, value) -> None:
    """``None`` (no limit) or an integer >= 0 (0 is refused later, naming the split file: no pairs)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def check_img_size(value) -> None:
    """``None`` (the model's native size) or a positive integer; 0 and negative sizes are refused."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"img_size must be a positive number of pixels or 'native' (None), got {value!r}")


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def check_writable_folder(folder: str | Path, what: str = "--out") -> None:
    """Refuse an output folder that cannot be written: an existing file, a path below a regular file, or a
    folder (or the nearest existing parent) where a file cannot be created. Creates nothing that stays."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder}: exists and is not a folder")
    base = _first_existing(folder.absolute())
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


def split_file(dataset) -> Path | str:
    """The file a dataset split was read from (for messages), or its root folder when unknown."""
    for attr in ("split_file", "csv_path", "annotation_file"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return value
    return getattr(dataset, "root", "?")


def check_has_pairs(dataset, limit: int | None = None, what: str = "pairs") -> int:
    """The number of pairs to use (``limit`` of them at most); refuses none: ``no pairs in FILE``."""
    check_limit("limit", limit)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        why = f" (limit {limit})" if limit is not None and len(dataset) else ""
        raise ValueError(f"no {what} in {split_file(dataset)}{why}")
    return n


#: Accepted layouts of the tensor arguments: (unbatched, batched). Letters name free sizes, digits fix them.
FEAT = ("C h w", "B C h w")
POINTS = ("N 2", "B N 2")
DESC = ("N C", "B N C")
MASK = ("N", "B N")


# --------------------------------------------------------------------------------------------------------------
# tensor shapes (the one helper of :mod:`~sd4match_utils.matching` and :mod:`~sd4match_utils.loss`): these raise
# ``ValueError`` / ``TypeError`` naming the argument and the shapes it may have
# --------------------------------------------------------------------------------------------------------------


def _layout_str(layout: str) -> str:
    return "(" + ", ".join(layout.split()) + ")"


def check_shape(
    x: Tensor, name: str, layouts: Sequence[str], *, floating: bool = False, min_cells: bool = False
) -> bool:
    """Check ``x`` against its accepted ``(unbatched, batched)`` layouts and say whether it is batched.

    Args:
        x: the tensor.
        name: argument name for the messages.
        layouts: layout strings such as ``"C h w"``; a digit token fixes that size, any other token is free.
            One layout means "no batched form".
        floating: also require a floating dtype.
        min_cells: also require the last two sizes (the cells of a feature map) to be at least 2.

    Returns:
        ``True`` when ``x`` matches the second (batched) layout.

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
        shapes = " or ".join(_layout_str(layout) for layout in layouts)
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
    if flags[0]:
        sizes = {t.shape[0] for t in tensors}
        if len(sizes) > 1:
            parts = ", ".join(f"{n} {t.shape[0]}" for n, t in zip(names, tensors))
            raise ValueError(f"batch sizes differ: {parts}")
    return flags[0]


def check_mask(mask: Tensor | None, points: Tensor, batched: bool) -> Tensor:
    """The boolean ``(B, N)`` mask of real points (all ``True`` when ``mask`` is ``None``)."""
    b, n = (points.shape[0], points.shape[1]) if batched else (1, points.shape[0])
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=points.device)
    if check_shape(mask, "mask", MASK) != batched or tuple(mask.shape) != tuple(points.shape[:-1]):
        raise ValueError(f"mask must have shape {tuple(points.shape[:-1])} (the points' leading sizes), got "
                         f"{tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {mask.dtype}")
    return (mask if batched else mask[None]).to(points.device)
