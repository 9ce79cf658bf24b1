"""Atomic writes: content, permissions like a plain open(), nothing left behind on failure."""

import os

import pytest
import torch

from sd4match_utils.cache import atomic_save_tensors, atomic_write_json, atomic_write_text


def test_atomic_writes_respect_umask_and_replace(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a" / "x.txt", "one")
        assert p.read_text() == "one" and (p.stat().st_mode & 0o777) == 0o644
        atomic_write_json(p, {"k": 1})
        assert p.read_text().strip().startswith("{")
        t = atomic_save_tensors(tmp_path / "t.safetensors", {"x": torch.ones(2)}, {"n": 3})
        assert (t.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_failed_write_keeps_the_old_file(tmp_path):
    p = atomic_save_tensors(tmp_path / "keep.safetensors", {"x": torch.zeros(1)})
    before = p.read_bytes()
    with pytest.raises(Exception):
        atomic_save_tensors(p, {"x": "not a tensor"})  # fails after the temporary file exists
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["keep.safetensors"]
