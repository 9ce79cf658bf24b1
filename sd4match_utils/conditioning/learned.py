"""Learned Single / Class prompts (SPEC §3): input rows that replace token + position embedding between BOS and
EOS, trained while the text encoder stays frozen."""

from __future__ import annotations

import json

import torch

from .files import PROMPT_KINDS, read_prompt_file, write_prompt_file
from .text import (N_PROMPT_TOKENS, UnknownCategoryError, encode_rows, prompt_text, resolve_category, special_ids,
                   token_embeddings)


def random_vocab_init(sd, n_tokens: int = N_PROMPT_TOKENS, count: int = 1, generator=None) -> torch.Tensor:
    """SPEC §3 initialisation: the ``n`` middle rows of ``[BOS, n random non-special vocabulary ids, EOS]``
    embedded (token + position). Returns ``(count, n_tokens, D)`` float32."""
    bos, eos, pad = special_ids(sd)
    allowed = torch.tensor([i for i in range(sd.text_encoder.config.vocab_size) if i not in {bos, eos, pad}])
    out = []
    for _ in range(count):
        ids = torch.full((1, 77), pad, dtype=torch.long)
        ids[0, 0], ids[0, n_tokens + 1] = bos, eos
        ids[0, 1 : n_tokens + 1] = allowed[torch.randint(len(allowed), (n_tokens,), generator=generator)]
        with torch.no_grad():
            out.append(token_embeddings(sd.text_encoder, ids.to(sd.device))[0, 1 : n_tokens + 1].float().cpu())
    return torch.stack(out)


def text_init(sd, texts: list[str], n_tokens: int = N_PROMPT_TOKENS) -> torch.Tensor:
    """Rows 1..n of each caption's token + position embedding (padded as the tokenizer pads).
    Returns ``(len(texts), n_tokens, D)`` float32."""
    ids = sd.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return token_embeddings(sd.text_encoder, ids.to(sd.device))[:, 1 : n_tokens + 1].float().cpu()


class LearnedPrompt(torch.nn.Module):
    """Single (one prompt per dataset) or Class (one per sorted category) learned prompt, a Conditioning.

    Shape: ``embeddings (K, n, D)``, K = 1 (Single) or the number of categories (Class).
    """

    pair_dependent = False

    def __init__(self, kind: str, embeddings: torch.Tensor, categories: list[str] | None = None):
        super().__init__()
        if kind not in PROMPT_KINDS:
            raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")
        categories = sorted(categories or [])
        if kind == "class" and embeddings.shape[0] != len(categories):
            raise ValueError(f"class prompt needs one row per category: {embeddings.shape[0]} vs {len(categories)}")
        if kind == "single" and embeddings.shape[0] != 1:
            raise ValueError(f"single prompt must have shape (1, n, D), got {tuple(embeddings.shape)}")
        if not 1 <= embeddings.shape[1] <= N_PROMPT_TOKENS:
            raise ValueError(f"prompt length must be 1..{N_PROMPT_TOKENS}, got {embeddings.shape[1]}")
        self.kind, self.categories = kind, categories
        self.embeddings = torch.nn.Parameter(embeddings.detach().clone().float())

    @property
    def n_tokens(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def initialise(cls, sd, kind: str, categories: list[str] | None = None, n_tokens: int = N_PROMPT_TOKENS,
                   init: str = "random", seed: int = 0) -> "LearnedPrompt":
        """New prompt; ``init``: ``"random"`` (:func:`random_vocab_init`), ``"text"`` (each category's template,
        ``"a photo of a object"`` for Single) or ``"empty"``."""
        categories = sorted(categories or [])
        if init == "random":
            count = len(categories) if kind == "class" else 1
            emb = random_vocab_init(sd, n_tokens, count, torch.Generator().manual_seed(seed))
        elif init in ("text", "empty"):
            names = categories if kind == "class" else ["object"]
            emb = text_init(sd, [prompt_text(init, c) for c in names], n_tokens)
        else:
            raise ValueError(f"init must be 'random', 'text' or 'empty', got {init!r}")
        return cls(kind, emb.to(sd.device), categories)

    def rows(self, categories: list[str]) -> torch.Tensor:
        """The learned rows ``(B, n_tokens, D)`` of each category; a Class prompt maps an unknown category through
        :func:`resolve_category` (PF-Willow ``winebottle(M)`` → ``bottle``)."""
        if self.kind == "single":
            return self.embeddings.expand(len(categories), -1, -1)
        names = [resolve_category(c, self.categories) for c in categories]
        if None in names:
            missing = sorted({c for c, n in zip(categories, names) if n is None})
            raise UnknownCategoryError(f"class prompt has no entry for {missing} (nor through CATEGORY_ALIASES); "
                                       f"it knows {self.categories}")
        return self.embeddings[[self.categories.index(n) for n in names]]

    def forward(self, sd, categories: list[str]) -> torch.Tensor:
        """Conditioning ``(B, 77, D)`` (text encoder dtype) of a batch of categories."""
        return encode_rows(sd, self.rows(categories))

    def condition(self, sd, samples) -> torch.Tensor:
        return self(sd, [s.category for s in samples])

    def key(self, sample) -> str:
        return "*" if self.kind == "single" else resolve_category(sample.category, self.categories) or sample.category

    def describe(self) -> dict:
        return {"prompt": self.kind, "n_tokens": self.n_tokens, "categories": self.categories}

    def param_groups(self, lr: float) -> list[dict]:
        """Adam parameter groups (one learning rate for the embeddings)."""
        return [{"params": [self.embeddings], "lr": lr}]

    def save(self, path, sd, extra: dict | None = None):
        """Write the prompt file (tensor ``embeddings``; metadata categories, n_tokens, model, ``extra``)."""
        meta = {"categories": self.categories, "n_tokens": self.n_tokens, **(extra or {})}
        return write_prompt_file(path, sd, self.kind, {"embeddings": self.embeddings}, meta,
                                 text_dim=self.embeddings.shape[2])

    @classmethod
    def load(cls, path, sd, check_model: bool = True) -> "LearnedPrompt":
        """Read a Single / Class prompt file checked against ``sd`` (:func:`read_prompt_file`, text width)."""
        tensors, meta = read_prompt_file(path, sd, check_model)
        emb = tensors["embeddings"]
        if emb.shape[2] != sd.text_dim:  # read_prompt_file checked it is (rows, n, width)
            raise ValueError(f"{path}: prompt of shape {tuple(emb.shape)} does not fit this model, whose text "
                             f"encoder is {sd.text_dim}-d (expected shape {(emb.shape[0], emb.shape[1], sd.text_dim)})")
        prompt = cls(meta["kind"], emb.to(sd.device), json.loads(meta["categories"]))
        prompt.metadata = meta
        return prompt
