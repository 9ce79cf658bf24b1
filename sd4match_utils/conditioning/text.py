"""The text side of the conditioning (SPEC §3): fixed prompts and the frozen CLIP text encoder.

``"text"`` is ``"a photo of a {category}"``, ``"empty"`` the empty string; both are encoded padded to 77 tokens.
Learned prompts are input rows that replace token + position embedding between BOS and EOS (:func:`encode_rows`).
"""

from __future__ import annotations

import re

import torch

FIXED_PROMPTS = ("text", "empty")
TEMPLATE = "a photo of a {}"
#: Learned rows between BOS and EOS (77 positions in all).
N_PROMPT_TOKENS = 75
#: Cross-dataset mapping for Class prompts (SPEC §8: PF-Pascal prompts on PF-Willow), see :func:`resolve_category`.
CATEGORY_ALIASES = {"winebottle": "bottle", "duck": "bird", "airplane": "aeroplane", "motorcycle": "motorbike",
                    "tv": "tvmonitor"}


def category_word(category: str) -> str:
    """The word used in the template: PF-Willow sub-classes ``car(G)`` → ``car``; everything else unchanged."""
    return re.sub(r"\(.*\)$", "", category).strip()


class UnknownCategoryError(KeyError, ValueError):
    """A Class prompt asked for a category it has no row for (bad input)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def resolve_category(category: str, known: list[str]) -> str | None:
    """The entry of ``known`` that stands for ``category``: itself, its word (``car(G)`` → ``car``) or that word's
    :data:`CATEGORY_ALIASES` entry (``duck(S)`` → ``bird``); ``None`` when none of them is known."""
    word = category_word(category)
    return next((name for name in (category, word, CATEGORY_ALIASES.get(word)) if name in known), None)


def template_text(category: str) -> str:
    """``"a photo of a {category}"`` with the PF-Willow mapping applied."""
    return TEMPLATE.format(category_word(category))


def prompt_text(kind: str, category: str) -> str:
    """The caption of the fixed prompt ``kind`` (``"text"`` or ``"empty"``) for one category."""
    if kind not in FIXED_PROMPTS:
        raise ValueError(f"unknown fixed prompt {kind!r}; expected one of {FIXED_PROMPTS}")
    return template_text(category) if kind == "text" else ""


@torch.no_grad()
def encode_text(sd, texts: list[str]) -> torch.Tensor:
    """CLIP text-encoder output ``(B, 77, D)`` (model dtype and device) of captions padded / truncated to 77 tokens."""
    ids = sd.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return sd.text_encoder(input_ids=ids.to(sd.device)).last_hidden_state


class FixedPrompt:
    """The fixed prompt ``"text"`` (the template of the pair's category) or ``"empty"``: a Conditioning."""

    pair_dependent = False

    def __init__(self, kind: str):
        if kind not in FIXED_PROMPTS:
            raise ValueError(f"unknown prompt {kind!r}; expected one of {FIXED_PROMPTS} or a prompt file")
        self.kind = kind

    def condition(self, sd, samples) -> torch.Tensor:
        return encode_text(sd, [self.key(s) for s in samples])

    def key(self, sample) -> str:
        """The caption itself (so categories with the same caption share it)."""
        return prompt_text(self.kind, sample.category)

    def describe(self) -> dict:
        return {"prompt": self.kind}


def special_ids(sd) -> tuple[int, int, int]:
    """The tokenizer's ``(bos, eos, pad)`` ids."""
    return sd.tokenizer.bos_token_id, sd.tokenizer.eos_token_id, sd.tokenizer.pad_token_id


def token_embeddings(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's own input embeddings, token + position.

    Shape: ``input_ids (B, 77)`` → ``(B, 77, D)``.
    """
    return text_encoder.embeddings(input_ids=input_ids)


def encode_embeddings(text_encoder, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """The frozen CLIP encoder on ready-made input rows (no position embedding is added), differentiable.

    A forward hook replaces the embedding layer's output, so the model's own mask, encoder and final norm run
    whatever the attention implementation (transformers 5.x ``CLIPTextModel.forward`` takes no ``inputs_embeds``).

    Shape: ``inputs_embeds (B, 77, D)`` → ``(B, 77, D)``.
    """
    x = inputs_embeds.to(text_encoder.dtype)
    ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)  # only their shape is used
    handle = text_encoder.embeddings.register_forward_hook(lambda module, args, output: x)
    try:
        return text_encoder(input_ids=ids).last_hidden_state
    finally:
        handle.remove()


def frame_rows(sd, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed float32 rows around ``n_tokens`` learned rows, as the tokenizer frames a sentence of that length:
    ``bos (1, D)`` = token(BOS) + pos(0), ``eos (1, D)`` = token(EOS) + pos(n_tokens + 1) and
    ``pad (75 - n_tokens, D)`` = token(pad) + pos(n_tokens + 2 ...)."""
    bos, eos, pad = special_ids(sd)
    ids = torch.full((1, 77), pad, dtype=torch.long, device=sd.device)
    ids[0, 0], ids[0, n_tokens + 1] = bos, eos
    with torch.no_grad():
        rows = token_embeddings(sd.text_encoder, ids)[0].float()
    return rows[:1], rows[n_tokens + 1 : n_tokens + 2], rows[n_tokens + 2 :]


def encode_rows(sd, rows: torch.Tensor) -> torch.Tensor:
    """Learned rows framed as ``[BOS | rows | EOS | pad…]`` (:func:`frame_rows`) and encoded (text encoder dtype).

    Shape: ``rows (B, n, D)`` → ``(B, 77, D)``.
    """
    bos, eos, pad = frame_rows(sd, rows.shape[1])
    seq = [bos, rows.to(bos.device), eos, pad]
    return encode_embeddings(sd.text_encoder, torch.cat([t.expand(rows.shape[0], -1, -1) for t in seq], dim=1))
