"""DINOv2 features for CPM: standard pre-processing, the tiny model, the content-keyed cache, offline loading from a
local folder (the fail-fast error for an uncached hub id is tested alongside the Stable Diffusion loader's, in
``test_models.py``)."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sd4match_utils.dino import (CROP, IMAGENET_MEAN, IMAGENET_STD, DinoFeatures, build_tiny_dino, crop_box,
                                 preprocess, resized_size)
from sd4match_utils.models import ModelNotAvailableError


def _image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return img.convert(mode)


@pytest.fixture(scope="module")
def tiny_dino():
    return DinoFeatures("tiny", memory_cache=0)


@pytest.mark.parametrize("w,h", [(317, 201), (200, 300), (256, 256), (225, 401)])
def test_preprocess_against_independent_computation(w, h):
    img = _image(w, h)
    x = preprocess(img)
    assert x.shape == (3, CROP, CROP) and x.dtype == torch.float32
    # short side → 256, long side → int(256 · long / short); floor-centred 224 crop; ImageNet mean / std
    short, long = min(w, h), max(w, h)
    size = (256, int(256 * long / short)) if w <= h else (int(256 * long / short), 256)
    assert resized_size(w, h) == size
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    assert crop_box(*size) == (left, top, left + 224, top + 224)
    arr = np.asarray(img.resize(size, Image.BICUBIC), dtype=np.float64)[top : top + 224, left : left + 224] / 255.0
    ref = ((arr - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-5)


def test_preprocess_equals_the_hugging_face_processor_of_dinov2_base():
    """facebook/dinov2-base's preprocessor_config.json, built in memory (PIL backend, no torchvision)."""
    tr = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = tr.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                    resample=3, do_center_crop=True, image_mean=list(IMAGENET_MEAN),
                                    image_std=list(IMAGENET_STD))
    for w, h in [(317, 201), (203, 298)]:
        img = _image(w, h, seed=w)
        ref = proc(img, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(preprocess(img), ref.float(), atol=1e-5, rtol=0)


def test_grayscale_and_rgba_are_converted():
    assert preprocess(_image(240, 260, mode="L")).shape == (3, 224, 224)
    assert preprocess(_image(240, 260, mode="RGBA")).shape == (3, 224, 224)
    flat = Image.new("RGB", (300, 250), tuple(int(round(m * 255)) for m in IMAGENET_MEAN))
    assert preprocess(flat).abs().max() < 0.02  # the ImageNet mean colour normalises to ~0


def test_tiny_dino_is_deterministic_and_leaves_the_global_rng(tiny_dino):
    state = torch.get_rng_state()
    other = DinoFeatures("tiny", memory_cache=0)
    assert torch.equal(torch.get_rng_state(), state)
    images = [_image(300, 220, seed=1), _image(210, 330, seed=2)]
    f = tiny_dino(images)
    assert f.shape == (2, 256, tiny_dino.dim) and tiny_dino.n_patches == 256 and 32 <= tiny_dino.dim <= 64
    assert not f.requires_grad
    torch.testing.assert_close(f, other(images))
    assert other.identity["fingerprint"] == tiny_dino.identity["fingerprint"]
    assert DinoFeatures("tiny", seed=1).identity["fingerprint"] != tiny_dino.identity["fingerprint"]
    # patch tokens = the model's output without its CLS token
    x = torch.stack([preprocess(im) for im in images])
    with torch.no_grad():
        hidden = tiny_dino.net(pixel_values=x).last_hidden_state
    assert hidden.shape[1] == 257
    torch.testing.assert_close(f, hidden[:, 1:])
    assert all(not p.requires_grad for p in tiny_dino.net.parameters())


def test_cache_is_keyed_by_image_content(tmp_path, monkeypatch):
    a, b = _image(260, 240, seed=3), _image(250, 270, seed=4)
    first = DinoFeatures("tiny", cache_dir=tmp_path, memory_cache=0)
    fa = first([a, b, a])
    torch.testing.assert_close(fa[0], fa[2])
    files = sorted((tmp_path / "dino").rglob("*.safetensors"))
    assert len(files) == 2
    second = DinoFeatures("tiny", cache_dir=tmp_path, memory_cache=0)
    calls = []
    real = DinoFeatures.compute

    def counting(self, images):
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(DinoFeatures, "compute", counting)
    same_pixels = Image.fromarray(np.asarray(a).copy())  # another object, same content
    torch.testing.assert_close(second([same_pixels, b]), fa[:2])
    assert calls == []  # both from the disk cache
    mirrored = a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    fm = second([mirrored])
    assert calls == [1] and not torch.allclose(fm[0], fa[0])
    assert len(sorted((tmp_path / "dino").rglob("*.safetensors"))) == 3
    # another model never reads these entries
    assert DinoFeatures("tiny", seed=7, cache_dir=tmp_path).key(a) != second.key(a)


def test_memory_cache_reuses_features(monkeypatch):
    d = DinoFeatures("tiny", memory_cache=4)
    img = _image(230, 240, seed=5)
    f1 = d([img])
    monkeypatch.setattr(DinoFeatures, "compute", lambda self, images: pytest.fail("recomputed"))
    torch.testing.assert_close(d([img]), f1)


def test_local_folder_loads_like_the_hub_layout(tmp_path, tiny_dino):
    build_tiny_dino(0).save_pretrained(tmp_path / "dinov2")
    d = DinoFeatures(str(tmp_path / "dinov2"), memory_cache=0)
    assert d.identity["source"] == "folder" and d.dim == tiny_dino.dim
    img = _image(280, 230, seed=6)
    torch.testing.assert_close(d([img]), tiny_dino([img]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="not a DINOv2 folder"):
        DinoFeatures(str(tmp_path / "empty"))
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        DinoFeatures(str(tmp_path / "nope"))
