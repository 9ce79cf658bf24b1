"""The embedded default: a tiny model with Stable Diffusion 2-1's topology, built from configs in memory.

SD 2-1's UNet block structure (cross-attention in ``up_blocks[1..3]``, linear projections, upcast attention,
v-prediction scheduler) at a tiny width, a ×8 VAE calibrated like a trained one, a 2-layer CLIP text encoder and a
real byte-level BPE ``CLIPTokenizer``; random weights, deterministic from a seed. Native resolution 384 (cheap
self-attention on a laptop CPU; any multiple of 64 works). Read-out shapes at 384²: up_blocks[0] 128 × 12 × 12,
[1] 128 × 24 × 24, [2] 64 × 48 × 48, [3] 32 × 48 × 48 (twice the sizes at 768²).
"""

from __future__ import annotations

import torch

#: SD 2-1's scheduler configuration (``scheduler/scheduler_config.json`` of the official repository).
SD21_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
#: SD 2-1's UNet configuration, for building the full-size architecture with random weights (benchmarks).
SD21_UNET_CONFIG = dict(
    sample_size=96, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    upcast_attention=True, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
#: SD 2-1's VAE configuration (full size).
SD21_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=768, scaling_factor=0.18215,
)
#: SD 2-1's text encoder (OpenCLIP ViT-H/14 text tower, penultimate layer: 23 layers of width 1024).
SD21_TEXT_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512)

TINY_UNET_CONFIG = dict(SD21_UNET_CONFIG, sample_size=48, block_out_channels=(32, 64, 128, 128),
                        attention_head_dim=(2, 4, 8, 8), cross_attention_dim=64, norm_num_groups=8)
TINY_VAE_CONFIG = dict(SD21_VAE_CONFIG, block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
TINY_TEXT_CONFIG = dict(SD21_TEXT_CONFIG, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, projection_dim=64)

#: Words that get whole-word BPE tokens in the tiny vocabulary (any other text still tokenizes, byte by byte).
TINY_WORDS = (
    "a photo of the an and in on with",
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person",
    "pottedplant sheep sofa train tvmonitor duck winebottle object part left right top bottom",
)


def tiny_vocab_and_merges(words=TINY_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary: each byte symbol, each with the ``</w>`` end-of-word mark, left-to-right
    merges for ``words`` (strings of space-separated words), then ``<|startoftext|>`` and ``<|endoftext|>``."""
    # CLIP's reversible byte → printable-character table
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(c) for c in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(" ".join(words).split()):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1]] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


@torch.no_grad()
def _calibrate_vae(vae) -> None:
    """Make the random VAE behave like a trained one: a nearly deterministic posterior (log-variance bias −12,
    std ≈ 0.0025) and ``scaling_factor = 1 / std(latent mean)`` on a fixed batch of smooth random images."""
    half = vae.quant_conv.bias.shape[0] // 2
    vae.quant_conv.bias[half:] = -12.0
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8) * 2 - 1, size=(128, 128), mode="bilinear")
    std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))


def build_tiny_components(seed: int = 0) -> dict:
    """``{"unet", "vae", "text_encoder", "tokenizer", "scheduler"}`` of the tiny model, weights drawn from ``seed``."""
    return build_components(TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG, seed)


def build_sd21_random_components(seed: int = 0) -> dict:
    """SD 2-1's full-size architecture (865 M UNet parameters, ~4 GB in fp32) with random weights."""
    return build_components(SD21_UNET_CONFIG, SD21_VAE_CONFIG, SD21_TEXT_CONFIG, seed)


def build_components(unet_config: dict, vae_config: dict, text_config: dict, seed: int = 0,
                     words=TINY_WORDS) -> dict:
    """Random-weight components from configs, deterministic from ``seed`` (global RNG untouched); the tokenizer
    has whole-word tokens for ``words`` and pads with ``"!"`` to 77 like SD 2-1's."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = tiny_vocab_and_merges(words)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77)
    vocab = tokenizer.get_vocab()
    text_config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                                 eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["!"], **text_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(text_config)
        _calibrate_vae(vae)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_config(SD21_SCHEDULER_CONFIG)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
