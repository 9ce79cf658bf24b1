"""Atomic writes, the lock of an output folder and a small on-disk tensor cache (safetensors, one file per key)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


@contextmanager
def atomic_target(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (with the permissions a plain
    ``open()`` would give), on any error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        mask = os.umask(0)  # mkstemp gives 0o600: read the umask to give what open() gives
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> dict | list | None:
    """The decoded JSON of ``path``, or ``None`` when it is missing or unreadable (a run's side files)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """``safetensors`` save through a temporary file; metadata values are stringified (safetensors needs str)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    with atomic_target(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return Path(path)


class FolderLockedError(RuntimeError):
    """Another run holds the lock of an output folder (the message names the folder and, when known, the owner)."""


LOCK_NAME = ".sd4match.lock"
LOCK_OWNER_NAME = ".sd4match.lock.owner.json"


@contextmanager
def locked_folder(folder: str | Path, what: str = "run"):
    """Hold an exclusive lock on ``folder`` (created if needed) for the duration of a run.

    The lock is ``folder/.sd4match.lock`` (``filelock``; released by the operating system if the process dies);
    the holder's pid, host and start time are written beside it so that a second run fails at once with
    :class:`FolderLockedError` naming them.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        info = read_json(folder / LOCK_OWNER_NAME)
        owner = (f" (pid {info.get('pid')} on host {info.get('host')}, {info.get('what', 'run')} started "
                 f"{info.get('started')})") if isinstance(info, dict) else ""
        raise FolderLockedError(f"{folder} is in use by another sd4match run{owner}; wait for it to finish "
                                f"or choose another output folder") from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
          "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        atomic_write_json(folder / LOCK_OWNER_NAME, me)
        yield folder
    finally:
        try:
            (folder / LOCK_OWNER_NAME).unlink(missing_ok=True)
        finally:
            lock.release()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in large unbuffered blocks."""
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tensor_key(tensor: torch.Tensor) -> str:
    """A short content hash of a tensor (values as float32; used in cache keys, e.g. of a conditioning)."""
    return hashlib.sha256(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class TensorCache:
    """``key → {name: tensor}`` stored as ``<root>/<kind>/<key[:2]>/<key>.safetensors``; a corrupt or truncated
    entry is treated as missing (and overwritten), never as a result."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def get(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        try:
            return load_file(self.path(kind, key))
        except (SafetensorError, OSError, ValueError):
            return None

    def put(self, kind: str, key: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
        atomic_save_tensors(self.path(kind, key), tensors, metadata)
