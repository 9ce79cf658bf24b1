"""Learned prompts (SPEC §3): the input-embedding path is exact, initialisation, Single / Class, prompt files."""

import pytest
import torch

from sd4match_utils.conditioning import (LearnedPrompt, encode_embeddings, encode_text, frame_rows,
                                         random_vocab_init, token_embeddings)
from sd4match_utils.models import load_sd


def test_own_embeddings_reproduce_the_encoder_output(tiny_sd):
    """Rows 1..75 set to the model's own (token + position) embeddings of a padded sentence: outputs at positions
    0..75 equal the normal forward pass (the causal mask hides position 76, which differs: EOS vs pad)."""
    text = "a photo of a bottle"
    ids = tiny_sd.tokenizer([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
    own = token_embeddings(tiny_sd.text_encoder, ids)[:, 1:76]
    prompt = LearnedPrompt("single", own)
    out = prompt(tiny_sd, ["anything"])
    ref = encode_text(tiny_sd, [text])
    assert out.shape == ref.shape == (1, 77, tiny_sd.text_dim)
    torch.testing.assert_close(out[:, :76], ref[:, :76], atol=1e-5, rtol=1e-5)
    # and the generic path on the full row set is exactly the model's forward
    torch.testing.assert_close(encode_embeddings(tiny_sd.text_encoder, token_embeddings(tiny_sd.text_encoder, ids)),
                               ref, atol=1e-5, rtol=1e-5)


def test_frame_rows_are_bos_eos_pad_with_positions(tiny_sd):
    bos, eos, pad = frame_rows(tiny_sd, 10)
    emb = tiny_sd.text_encoder.embeddings
    tok = tiny_sd.tokenizer
    torch.testing.assert_close(bos[0], emb.token_embedding.weight[tok.bos_token_id] + emb.position_embedding.weight[0])
    torch.testing.assert_close(eos[0], emb.token_embedding.weight[tok.eos_token_id] + emb.position_embedding.weight[11])
    assert pad.shape == (65, tiny_sd.text_dim)
    torch.testing.assert_close(pad[-1], emb.token_embedding.weight[tok.pad_token_id] + emb.position_embedding.weight[76])


def test_random_init_uses_vocabulary_rows_with_positions(tiny_sd):
    g = torch.Generator().manual_seed(0)
    init = random_vocab_init(tiny_sd, 75, 2, g)
    assert init.shape == (2, 75, tiny_sd.text_dim)
    emb = tiny_sd.text_encoder.embeddings
    tokens = init[0] - emb.position_embedding.weight[1:76]
    # every row minus its position embedding is a row of the vocabulary
    dist = torch.cdist(tokens, emb.token_embedding.weight)
    assert dist.min(dim=1).values.max() < 1e-3 < dist.kthvalue(2, dim=1).values.min()
    again = random_vocab_init(tiny_sd, 75, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(init, again)


def test_gradients_reach_only_the_prompt(tiny_sd):
    prompt = LearnedPrompt.initialise(tiny_sd, "class", ["car", "bottle"], n_tokens=75, seed=1)
    assert prompt.categories == ["bottle", "car"]
    cond = prompt(tiny_sd, ["car", "bottle", "car"])
    assert cond.shape == (3, 77, tiny_sd.text_dim)
    cond.square().sum().backward()
    assert prompt.embeddings.grad is not None and prompt.embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_sd.text_encoder.parameters())
    with pytest.raises(KeyError, match="cat"):
        prompt(tiny_sd, ["cat"])


def test_short_prompts_are_padded_like_sentences(tiny_sd):
    p = LearnedPrompt.initialise(tiny_sd, "single", n_tokens=5, init="text")
    out = p(tiny_sd, ["x"])
    ref = encode_text(tiny_sd, ["a photo of a object"])
    # "a photo of a object" is 5 tokens, so the framed sequence is exactly the tokenizer's one
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_prompt_file_roundtrip_and_checks(tiny_sd, tmp_path):
    p = LearnedPrompt.initialise(tiny_sd, "class", ["car", "bottle"], seed=3)
    path = p.save(tmp_path / "prompt.safetensors", tiny_sd, {"settings": {"lr": 0.01}})
    q = LearnedPrompt.load(path, tiny_sd)
    assert q.kind == "class" and q.categories == ["bottle", "car"]
    torch.testing.assert_close(q.embeddings, p.embeddings)
    other = load_sd("tiny", seed=5)
    with pytest.raises(ValueError, match="learned for model"):
        LearnedPrompt.load(path, other)
    assert LearnedPrompt.load(path, other, check_model=False).kind == "class"
    # a prompt of another width names both shapes
    wide = LearnedPrompt("single", torch.zeros(1, 75, 1024))
    wide_path = wide.save(tmp_path / "wide.safetensors", tiny_sd)
    with pytest.raises(ValueError, match=r"\(1, 75, 1024\).*expected shape \(1, 75, 64\)"):
        LearnedPrompt.load(wide_path, tiny_sd)
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(ValueError, match="junk.safetensors"):
        LearnedPrompt.load(tmp_path / "junk.safetensors", tiny_sd)


def test_unknown_category_is_bad_input_not_a_crash(tiny_sd, tmp_path, monkeypatch):
    """A Class prompt without the dataset's category stops `evaluate` with a one-line message (exit 2); any other
    KeyError (a bug) is not swallowed into such a message."""
    from sd4match_utils import cli
    from sd4match_utils.conditioning import UnknownCategoryError

    prompt = LearnedPrompt.initialise(tiny_sd, "class", ["cat"], n_tokens=2, seed=0)
    with pytest.raises(UnknownCategoryError) as info:
        prompt.rows(["dog"])
    assert isinstance(info.value, ValueError) and str(info.value).startswith("class prompt has no entry for ['dog']")

    def buggy(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_synthetic", buggy)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["synthetic", "--out", str(tmp_path)])
