"""The text side of the conditioning (SPEC §3): fixed prompts and the frozen CLIP text encoder.

``"text"`` is the template ``"a photo of a {category}"``; ``"empty"`` is the empty string (which the original code
could not handle). Both go through the frozen CLIP text encoder padded to 77 tokens → ``(B, 77, D)``.

Learned prompts (:mod:`.learned`, :mod:`.cpm`) are input rows that replace token + position embedding between BOS
and EOS: :func:`encode_rows` frames them and :func:`encode_embeddings` runs the encoder on them.
"""

from __future__ import annotations

import re

import torch

FIXED_PROMPTS = ("text", "empty")
TEMPLATE = "a photo of a {}"
#: Learned rows between BOS and EOS (77 positions in all).
N_PROMPT_TOKENS = 75

#: Cross-dataset mapping for Class prompts (SPEC §8: PF-Pascal prompts evaluated on PF-Willow). A category the
#: prompt does not know is first reduced to its word (:func:`category_word`: ``car(G)`` → ``car``), then mapped
#: here to a PF-Pascal / SPair-71k category (:func:`resolve_category`).
CATEGORY_ALIASES = {"winebottle": "bottle", "duck": "bird", "airplane": "aeroplane", "motorcycle": "motorbike",
                    "tv": "tvmonitor"}


def category_word(category: str) -> str:
    """The word used in the template: PF-Willow sub-classes ``car(G)`` → ``car``, ``winebottle(wC)`` →
    ``winebottle``; everything else unchanged."""
    return re.sub(r"\(.*\)$", "", category).strip()


class UnknownCategoryError(KeyError, ValueError):
    """A Class prompt asked for a category it has no row for (a ``KeyError`` and a ``ValueError``: bad input)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def resolve_category(category: str, known: list[str]) -> str | None:
    """The entry of ``known`` that stands for ``category``: itself, its word (``car(G)`` → ``car``), or that
    word's :data:`CATEGORY_ALIASES` entry (``winebottle(M)`` → ``bottle``, ``duck(S)`` → ``bird``); ``None``
    when none of them is known."""
    if category in known:
        return category
    word = category_word(category)
    for name in (word, CATEGORY_ALIASES.get(word)):
        if name in known:
            return name
    return None


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


class FixedPrompt:
    """The fixed prompt ``"text"`` (the template of the pair's category) or ``"empty"``: a
    :class:`~sd4match_utils.conditioning.Conditioning` that depends only on the category."""

    pair_dependent = False

    def __init__(self, kind: str):
        if kind not in FIXED_PROMPTS:
            raise ValueError(f"unknown prompt {kind!r}; expected one of {FIXED_PROMPTS} or a prompt file")
        self.kind = kind

    def condition(self, sd, samples) -> torch.Tensor:
        return encode_text(sd, [prompt_text(self.kind, s.category) for s in samples])

    def key(self, sample) -> str:
        """The caption itself (so categories with the same caption share it)."""
        return prompt_text(self.kind, sample.category)

    def describe(self) -> dict:
        return {"prompt": self.kind}


# --------------------------------------------------------------------------------------------------------------
# Input rows of learned prompts: token + position embedding replaced between BOS and EOS.
# --------------------------------------------------------------------------------------------------------------


def special_ids(sd) -> tuple[int, int, int]:
    """The tokenizer's ``(bos, eos, pad)`` ids."""
    tok = sd.tokenizer
    return tok.bos_token_id, tok.eos_token_id, tok.pad_token_id


def token_embeddings(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's own input embeddings, token + position: ``(B, 77)`` ids → ``(B, 77, D)``."""
    return text_encoder.embeddings(input_ids=input_ids)


def encode_embeddings(text_encoder, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Run the frozen CLIP encoder on ready-made input rows (no position embedding is added here).

    The model's own ``forward`` runs, with its embedding layer's output replaced by ``inputs_embeds`` (a forward
    hook, removed on return): causal mask → encoder → final layer norm exactly as for token ids, whatever the
    attention implementation or transformers 5.x release (whose ``CLIPTextModel.forward`` takes no
    ``inputs_embeds``). Differentiable with respect to ``inputs_embeds``.

    Args:
        inputs_embeds: ``(B, 77, D)``.

    Returns:
        ``(B, 77, D)`` conditioning for the UNet.
    """
    x = inputs_embeds.to(text_encoder.dtype)
    ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)  # only their shape is used
    handle = text_encoder.embeddings.register_forward_hook(lambda module, args, output: x)
    try:
        return text_encoder(input_ids=ids).last_hidden_state
    finally:
        handle.remove()


def frame_rows(sd, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed rows around ``n_tokens`` learned rows, as the tokenizer would frame a sentence of that length.

    Returns:
        ``bos (1, D)`` = token(BOS) + pos(0); ``eos (1, D)`` = token(EOS) + pos(n_tokens + 1);
        ``pad (75 - n_tokens, D)`` = token(pad) + pos(n_tokens + 2 ...) (empty when ``n_tokens = 75``).
    """
    bos, eos, pad = special_ids(sd)
    ids = torch.full((1, 77), pad, dtype=torch.long, device=sd.device)
    ids[0, 0], ids[0, n_tokens + 1] = bos, eos
    with torch.no_grad():
        rows = token_embeddings(sd.text_encoder, ids)[0].float()
    return rows[:1], rows[n_tokens + 1 : n_tokens + 2], rows[n_tokens + 2 :]


def encode_rows(sd, rows: torch.Tensor) -> torch.Tensor:
    """Learned rows ``(B, n, D)`` framed as ``[BOS | rows | EOS | pad…]`` (:func:`frame_rows`) and encoded:
    the UNet's ``(B, 77, D)`` conditioning in the text encoder's dtype."""
    bos, eos, pad = frame_rows(sd, rows.shape[1])
    b = rows.shape[0]
    seq = torch.cat([bos.expand(b, -1, -1), rows.to(bos.device), eos.expand(b, -1, -1),
                     pad.expand(b, -1, -1)], dim=1)
    return encode_embeddings(sd.text_encoder, seq)
