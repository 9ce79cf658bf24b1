"""Feature extraction: early exit equals the full pass, the ensemble, seeding, caching, precisions."""

import numpy as np
import pytest
import torch
from PIL import Image

from sd4match_utils.conditioning import encode_text
from sd4match_utils.features import (FeatureExtractor, add_noise, feature_shapes, image_key, preprocess,
                                     unet_readout)


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (150 + 10 * i, 200, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def cond(tiny_sd):
    return encode_text(tiny_sd, ["a photo of a bottle"])


def test_preprocess_range_shape_and_modes():
    img = Image.fromarray(np.full((40, 60), 255, np.uint8), mode="L")
    x = preprocess(img, 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))
    rgba = Image.fromarray(np.zeros((10, 10, 4), np.uint8), mode="RGBA")
    assert torch.allclose(preprocess(rgba, 64), -torch.ones(3, 64, 64))


def test_add_noise_formula(tiny_sd):
    z0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # scaled-linear (SPEC §2)
    a = torch.cumprod(1 - betas, 0)[50].item()
    expected = a**0.5 * z0 + (1 - a) ** 0.5 * eps
    torch.testing.assert_close(add_noise(z0, eps, 50, tiny_sd.alphas_cumprod), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("img_size", [384, 768])
def test_feature_shapes(tiny_sd, cond, img_size):
    fx = FeatureExtractor(tiny_sd, layers=(0, 1, 2, 3), ensemble=1, img_size=img_size)
    feats = fx(_images(1), cond)
    expected = feature_shapes(tiny_sd, img_size)
    for l, f in feats.items():
        assert tuple(f.shape) == (1, *expected[l])
    s = img_size // 8
    assert expected[1][1:] == (s // 2, s // 2) and expected[3][1:] == (s, s)


@pytest.mark.parametrize("layers", [(1,), (0, 2), (0, 1, 2, 3)])
def test_early_exit_equals_full_pass(tiny_sd, cond, layers):
    z = torch.randn(2, 4, 48, 48)
    early = unet_readout(tiny_sd.unet, z, 50, cond, layers, early_exit=True)
    full = unet_readout(tiny_sd.unet, z, 50, cond, layers, early_exit=False)
    assert early.keys() == full.keys() == set(layers)
    for l in layers:
        torch.testing.assert_close(early[l], full[l], rtol=0, atol=0)


def test_early_exit_skips_deeper_blocks(tiny_sd, cond):
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(tiny_sd.unet.up_blocks)]
    try:
        unet_readout(tiny_sd.unet, torch.randn(1, 4, 48, 48), 50, cond, (1,))
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1]


def test_ensemble_is_mean_of_noised_copies_and_vae_runs_once(tiny_sd, cond):
    images = _images(2)
    fx = FeatureExtractor(tiny_sd, layers=(1,), ensemble=4, timestep=261, batch_size=3)
    vae_calls = []
    h = tiny_sd.vae.encoder.register_forward_hook(lambda m, i, o: vae_calls.append(i[0].shape[0]))
    try:
        feats = fx(images, cond)[1]
    finally:
        h.remove()
    assert sum(vae_calls) == 2, "one VAE pass per image, not per ensemble copy"
    keys = [image_key(im) for im in images]
    z0 = fx.latents(images)
    noise = fx.noise(keys, tuple(z0.shape[1:]))
    for i in range(2):
        maps = [
            unet_readout(tiny_sd.unet, add_noise(z0[i : i + 1], noise[i, e : e + 1], 261, tiny_sd.alphas_cumprod),
                         261, cond, (1,))[1]
            for e in range(4)
        ]
        torch.testing.assert_close(feats[i], torch.cat(maps).mean(0), atol=1e-5, rtol=1e-4)
    # the copies really differ (independent noise)
    assert not torch.allclose(noise[0, 0], noise[0, 1])


def test_seeding_and_batch_independence(tiny_sd, cond):
    a, b, c = _images(3)
    fx = FeatureExtractor(tiny_sd, layers=(1,), ensemble=2, seed=7)
    together = fx([a, b, c], cond)[1]
    alone = FeatureExtractor(tiny_sd, layers=(1,), ensemble=2, seed=7)([b], cond)[1]
    torch.testing.assert_close(together[1], alone[0], atol=1e-5, rtol=1e-4)
    other_seed = FeatureExtractor(tiny_sd, layers=(1,), ensemble=2, seed=8)([b], cond)[1]
    assert not torch.allclose(other_seed, alone, atol=1e-4)


def test_latent_mean_is_seed_independent(tiny_sd):
    img = _images(1)
    z1 = FeatureExtractor(tiny_sd, latent="mean", seed=1).latents(img)
    z2 = FeatureExtractor(tiny_sd, latent="mean", seed=2).latents(img)
    s1 = FeatureExtractor(tiny_sd, latent="sample", seed=1).latents(img)
    torch.testing.assert_close(z1, z2)
    assert not torch.equal(z1, s1)
    assert z1.shape == (1, 4, 48, 48) and z1.dtype == torch.float32


def test_prompt_changes_features(tiny_sd, cond):
    img = _images(1)
    fx = FeatureExtractor(tiny_sd, layers=(1,), ensemble=1)
    f_text = fx(img, cond)[1]
    f_empty = fx(img, encode_text(tiny_sd, [""]))[1]
    assert not torch.allclose(f_text, f_empty, atol=1e-4)


def test_disk_cache_roundtrip_and_keys(tiny_sd, cond, tmp_path):
    images = _images(2)
    fx = FeatureExtractor(tiny_sd, layers=(1, 2), ensemble=2, cache_dir=tmp_path)
    first = fx(images, cond)
    files = sorted((tmp_path / "features").rglob("*.safetensors"))
    assert len(files) == 2 and len(list((tmp_path / "latents").rglob("*.safetensors"))) == 2
    calls = []
    h = tiny_sd.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = FeatureExtractor(tiny_sd, layers=(1, 2), ensemble=2, cache_dir=tmp_path)(images, cond)
    finally:
        h.remove()
    assert not calls, "cached features must not run the UNet"
    for l in (1, 2):
        torch.testing.assert_close(first[l], again[l])
    # another timestep is another key
    FeatureExtractor(tiny_sd, layers=(1, 2), ensemble=2, timestep=100, cache_dir=tmp_path)(images[:1], cond)
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 3
    # a corrupt entry is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    fixed = FeatureExtractor(tiny_sd, layers=(1, 2), ensemble=2, cache_dir=tmp_path)(images, cond)
    torch.testing.assert_close(fixed[1], first[1])
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files left behind"


def test_bf16_close_to_fp32(cond):
    from sd4match_utils.models import load_sd

    img = _images(1)
    f32 = FeatureExtractor(load_sd("tiny"), layers=(1,), ensemble=1)(img, cond)[1]
    sd16 = load_sd("tiny", precision="bf16")
    f16 = FeatureExtractor(sd16, layers=(1,), ensemble=1)(img, encode_text(sd16, ["a photo of a bottle"]))[1]
    assert f16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(f32, f16, dim=1).mean()
    assert cos > 0.99


def test_bad_settings_raise(tiny_sd):
    with pytest.raises(ValueError, match="latent"):
        FeatureExtractor(tiny_sd, latent="mode")
    with pytest.raises(ValueError, match="timestep"):
        FeatureExtractor(tiny_sd, timestep=1000)
    with pytest.raises(ValueError, match="layers"):
        FeatureExtractor(tiny_sd, layers=(4,))
    with pytest.raises(ValueError, match="multiple of 64"):
        FeatureExtractor(tiny_sd, img_size=100)
