"""Fixed prompts: the template, PF-Willow's mapping, the empty prompt."""

import pytest
import torch

from sd4match_utils.conditioning import category_word, encode_text, prompt_text, template_text


@pytest.mark.parametrize("cat,word", [("car(G)", "car"), ("winebottle(wC)", "winebottle"), ("duck(S)", "duck"),
                                      ("motorbike(M)", "motorbike"), ("aeroplane", "aeroplane")])
def test_willow_mapping(cat, word):
    assert category_word(cat) == word
    assert template_text(cat) == f"a photo of a {word}"


def test_prompt_kinds():
    assert prompt_text("empty", "cat") == ""
    assert prompt_text("text", "cat") == "a photo of a cat"
    with pytest.raises(ValueError, match="unknown fixed prompt"):
        prompt_text("single", "cat")


def test_encode_text_shapes_and_empty(tiny_sd):
    out = encode_text(tiny_sd, ["a photo of a car", ""])
    assert out.shape == (2, 77, tiny_sd.text_dim)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    # the empty prompt is BOS, EOS then padding: same as encoding it alone
    torch.testing.assert_close(out[1:], encode_text(tiny_sd, [""]))


def test_every_prompt_is_a_conditioning_and_binds_to_the_model(tiny_sd):
    from types import SimpleNamespace

    from sd4match_utils.conditioning import (Conditioning, ConditionalPrompt, FixedPrompt, LearnedPrompt,
                                             make_conditioning)

    fixed, learned = FixedPrompt("text"), LearnedPrompt.initialise(tiny_sd, "single", n_tokens=4)
    cpm = ConditionalPrompt(tiny_sd.text_dim, 48)
    assert all(isinstance(p, Conditioning) for p in (fixed, learned, cpm)) and not isinstance("text", Conditioning)
    assert (fixed.pair_dependent, learned.pair_dependent, cpm.pair_dependent) == (False, False, True)
    car = SimpleNamespace(category="car(G)")
    bound = make_conditioning(tiny_sd, "text")
    torch.testing.assert_close(bound(car), encode_text(tiny_sd, ["a photo of a car"]))
    assert bound(car) is bound(SimpleNamespace(category="car(M)"))  # the same caption is encoded once
    assert bound.describe() == {"prompt": "text"} and not bound.pair_dependent
    torch.testing.assert_close(make_conditioning(tiny_sd, learned)(car), learned(tiny_sd, ["car"]))
    with pytest.raises(ValueError, match="--prompt must be one of"):
        make_conditioning(tiny_sd, "a photo")
