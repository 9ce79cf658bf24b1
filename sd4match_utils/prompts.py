"""Text conditioning of the UNet: the fixed prompts of the baselines (SPEC §3).

``"text"`` is the template ``"a photo of a {category}"``; ``"empty"`` is the empty string (which the original
code could not handle). Both go through the frozen CLIP text encoder padded to 77 tokens → ``(B, 77, D)``.
"""

from __future__ import annotations

import hashlib
import re

import torch

FIXED_PROMPTS = ("text", "empty")
TEMPLATE = "a photo of a {}"


def category_word(category: str) -> str:
    """The word used in the template: PF-Willow sub-classes ``car(G)`` → ``car``, ``winebottle(wC)`` →
    ``winebottle``; everything else unchanged."""
    return re.sub(r"\(.*\)$", "", category).strip()


def template_text(category: str) -> str:
    """``"a photo of a {category}"`` with the PF-Willow mapping applied."""
    return TEMPLATE.format(category_word(category))


def prompt_text(kind: str, category: str) -> str:
    """The caption of a fixed prompt ``kind`` (``"text"`` or ``"empty"``) for one category."""
    if kind == "text":
        return template_text(category)
    if kind == "empty":
        return ""
    raise ValueError(f"unknown fixed prompt {kind!r}; expected one of {FIXED_PROMPTS}")


@torch.no_grad()
def encode_text(sd, texts: list[str]) -> torch.Tensor:
    """CLIP text-encoder output for captions, padded / truncated to 77 tokens.

    Returns:
        ``(B, 77, D)`` in the model's dtype on its device.
    """
    tok = sd.tokenizer(
        list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    out = sd.text_encoder(input_ids=tok.input_ids.to(sd.device))
    return out.last_hidden_state


def conditioning_key(cond: torch.Tensor) -> str:
    """A short content hash of a conditioning tensor (used in cache keys)."""
    return hashlib.sha256(cond.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
