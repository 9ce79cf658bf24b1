"""Cheap checks of run arguments, done before any expensive work (before a model loads).

Each raises ``ValueError`` with a one-line message naming the offending value or file; the command line turns it
into ``sd4match <command>: error: ...`` and exit code 2.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from pathlib import Path


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
