"""Model identity from weight content: two checkpoints of one architecture (same file names and sizes) never share
a fingerprint, a feature cache filled with one is not served to the other, local weight files are hashed once
(memo keyed by path, size and mtime), Hugging Face cache files reuse the SHA-256 their blob is named by, and a
corrupted Hugging Face cache is reported as such instead of as "not cached"."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sd4match_utils import models
from sd4match_utils.features import FeatureExtractor
from sd4match_utils.models import ModelNotAvailableError, load_sd

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tiny_sd, tmp_path_factory):
    """The tiny model saved as a diffusers folder."""
    return tiny_sd.save_pretrained(tmp_path_factory.mktemp("fp") / "tiny-a")


@pytest.fixture
def memo_dir(tmp_path, monkeypatch):
    """A fresh, empty per-user cache folder (the hash memo lives there)."""
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("SD4MATCH_CACHE", str(folder))
    return folder


def _retrained_copy(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose UNet ``conv_in`` weights have other values: every file keeps its name and size."""
    shutil.copytree(src, dst)
    f = dst / UNET_WEIGHTS
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    tensors = load_file(f)
    tensors["conv_in.weight"] = tensors["conv_in.weight"] * 1.5 + 0.01
    save_file(tensors, str(f), metadata=meta)
    return dst


def _sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _count_hashing(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda p: calls.append(Path(p)) or real(p))
    return calls


def test_same_names_and_sizes_other_weights_other_identity(saved, tmp_path, memo_dir):
    other = _retrained_copy(saved, tmp_path / "tiny-b")
    assert _sizes(other) == _sizes(saved), "the copy must look identical by names and sizes"
    a, b = load_sd(str(saved)), load_sd(str(other))
    assert not torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)
    assert a.identity["fingerprint"] != b.identity["fingerprint"]
    assert "sha256" in a.identity["fingerprint_of"] and "size" not in a.identity["fingerprint_of"]
    # identical content in another folder is the same model
    assert load_sd(str(shutil.copytree(saved, tmp_path / "tiny-a2"))).identity["fingerprint"] == a.identity["fingerprint"]


def test_feature_cache_of_one_checkpoint_is_not_served_to_another(saved, tmp_path, memo_dir):
    other = _retrained_copy(saved, tmp_path / "tiny-b")
    cache = tmp_path / "features"
    img = Image.fromarray((torch.rand(96, 80, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    cond = torch.zeros(1, 77, 64)
    kw = dict(layers=(1,), ensemble=1, img_size=128, cache_dir=cache)
    fa = FeatureExtractor(load_sd(str(saved)), **kw)
    feats_a = fa([img], cond)[1]
    assert fa.extracted == 1
    again = FeatureExtractor(load_sd(str(saved)), **kw)  # the same weights: served from the cache
    torch.testing.assert_close(again([img], cond)[1], feats_a, rtol=0, atol=0)
    assert again.extracted == 0
    fb = FeatureExtractor(load_sd(str(other)), **kw)
    feats_b = fb([img], cond)[1]
    assert fb.extracted == 1, "features of another checkpoint were served from the cache"
    assert not torch.allclose(feats_a, feats_b)


def test_local_weights_are_hashed_once_and_again_when_changed(saved, tmp_path, memo_dir, monkeypatch):
    folder = shutil.copytree(saved, tmp_path / "m")
    weights = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in {".json", ".txt"})
    assert weights
    calls = _count_hashing(monkeypatch)
    first = models.fingerprint_folder(folder)
    assert sorted(calls) == weights  # each weight file read once
    assert (memo_dir / "file-sha256.json").is_file()
    calls.clear()
    assert models.fingerprint_folder(folder) == first
    assert calls == [], "the memo should spare re-reading unchanged files"
    # rewrite one file with other bytes of the same size; its mtime changes, so it is hashed again
    f = folder / UNET_WEIGHTS
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    stat = f.stat()
    f.write_bytes(bytes(data))
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = models.fingerprint_folder(folder)
    assert calls == [f.resolve()]
    assert second != first


def test_unwritable_memo_folder_still_fingerprints(saved, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SD4MATCH_CACHE", str(blocker / "cache"))  # cannot be created
    calls = _count_hashing(monkeypatch)
    fp1 = models.fingerprint_folder(saved)
    n = len(calls)
    assert n > 0 and models.fingerprint_folder(saved) == fp1
    assert len(calls) == 2 * n  # no memo: hashed again, same answer


def _as_hf_cache(folder: Path, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Store ``folder``'s files the way the Hugging Face cache does: ``blobs/<sha256>`` and relative symlinks
    from ``snapshots/<commit>/...``, with ``refs/main``. Returns the repository's storage folder."""
    from huggingface_hub import constants

    storage = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    shutil.rmtree(storage, ignore_errors=True)
    (storage / "blobs").mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    snap = storage / "snapshots" / commit
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        shutil.copyfile(p, storage / "blobs" / digest)
        link = snap / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(storage / "blobs" / digest, link.parent))
    return storage


def test_hub_cache_reuses_blob_digests(saved, memo_dir, monkeypatch):
    _as_hf_cache(saved, "sd4match-test/tiny-cached")
    calls = _count_hashing(monkeypatch)
    sd = load_sd("sd4match-test/tiny-cached")
    assert sd.identity["source"] == "hub"
    assert calls == [], "files of the Hugging Face cache are named by their SHA-256 already"
    calls.clear()
    plain = models.fingerprint_folder(saved)  # the same bytes in a plain folder, hashed for real
    assert calls and plain == sd.identity["fingerprint"]


def test_corrupted_hub_cache_is_reported_as_corrupted(saved):
    storage = _as_hf_cache(saved, "sd4match-test/dangling")
    blob = next((storage / "blobs").iterdir())
    blob.unlink()  # a pruned or half-copied cache: a snapshot file points to a missing blob
    with pytest.raises(ModelNotAvailableError, match="corrupted") as err:
        load_sd("sd4match-test/dangling")
    assert str(storage / "snapshots") in str(err.value)

    storage = _as_hf_cache(saved, "sd4match-test/bad-ref")
    (storage / "refs" / "main").unlink()
    (storage / "refs" / "main").mkdir()  # unreadable ref: the look-up itself fails with an OSError
    with pytest.raises(ModelNotAvailableError, match="corrupted") as err:
        load_sd("sd4match-test/bad-ref")
    msg = str(err.value)
    assert str(storage) in msg and "IsADirectoryError" in msg and "not in the local cache" not in msg


def test_hub_lookup_only_treats_not_found_as_not_cached(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def not_cached(*args, **kwargs):
        raise LocalEntryNotFoundError("nothing cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    with pytest.raises(ModelNotAvailableError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        models.hub_snapshot("org/name", ["*"], "Some weights", "hint")

    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/cache/models--org--name/refs/main")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    with pytest.raises(ModelNotAvailableError, match=r"corrupted: PermissionError.*Permission denied") as err:
        models.hub_snapshot("org/name", ["*"], "Some weights", "hint")
    assert "models--org--name" in str(err.value) and isinstance(err.value.__cause__, PermissionError)


def test_download_bookkeeping_is_not_part_of_the_identity(saved, tmp_path, memo_dir):
    folder = shutil.copytree(saved, tmp_path / "local-dir")
    before = models.fingerprint_folder(folder)
    meta = folder / ".cache" / "huggingface" / "download" / "unet"
    meta.mkdir(parents=True)
    (meta / "diffusion_pytorch_model.safetensors.metadata").write_text("0123abcd\netag\n1712345678.123\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert models.fingerprint_folder(folder) == before
