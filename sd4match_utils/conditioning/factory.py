"""One entry point from a prompt spec to the conditioning of a pair: :func:`make_conditioning`."""

from __future__ import annotations

from pathlib import Path

import torch

from .cpm import ConditionalPrompt
from .files import inspect_prompt_file, read_prompt_file
from .learned import LearnedPrompt
from .protocol import Conditioning
from .text import FIXED_PROMPTS, FixedPrompt


def load_prompt(path, sd, check_model: bool = True, **cpm_options) -> LearnedPrompt | ConditionalPrompt:
    """Load any prompt file (Single, Class or CPM) as the module that produces its conditioning.

    ``cpm_options`` (``dino``, ``dino_cache``) go to :meth:`ConditionalPrompt.load` and are ignored otherwise."""
    _, meta = read_prompt_file(path, sd, check_model=False)
    if meta.get("kind") == "cpm":
        return ConditionalPrompt.load(path, sd, check_model, **cpm_options)
    return LearnedPrompt.load(path, sd, check_model)


class BoundConditioning:
    """A :class:`Conditioning` bound to model ``sd``: ``(1, 77, D)`` conditioning of one pair, without gradients.

    Category-level conditionings are computed once per :meth:`Conditioning.key`; pair-dependent ones (CPM) for
    every pair. :meth:`describe` adds the prompt file (``"file"``) when there is one.
    """

    def __init__(self, sd, conditioning: Conditioning, source: str | None = None):
        self.sd, self.conditioning, self.source = sd, conditioning, source
        self.pair_dependent = bool(conditioning.pair_dependent)
        self._by_key: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, sample) -> torch.Tensor:
        if self.pair_dependent:
            return self.conditioning.condition(self.sd, [sample])
        key = self.conditioning.key(sample)
        if key not in self._by_key:
            self._by_key[key] = self.conditioning.condition(self.sd, [sample])
        return self._by_key[key]

    def describe(self) -> dict:
        described = self.conditioning.describe()
        return described if self.source is None else {**described, "file": self.source}


def check_prompt_spec(spec: str) -> None:
    """Before the model loads: a prompt that is not ``text`` / ``empty`` must be a readable prompt file
    (``ValueError`` / ``FileNotFoundError`` naming it)."""
    if spec in FIXED_PROMPTS:
        return
    path = Path(spec)
    if path.suffix != ".safetensors" and not path.exists():
        raise ValueError(f"--prompt must be one of {FIXED_PROMPTS} or a prompt .safetensors file, got {spec!r}")
    inspect_prompt_file(path)


def make_conditioning(sd, spec, **cpm_options) -> BoundConditioning:
    """The conditioning of pairs by ``spec`` on model ``sd``.

    ``spec``: ``"text"`` / ``"empty"`` (fixed prompt), a path to a prompt file (the learned prompt it holds;
    ``cpm_options``: ``dino``, ``dino_cache`` for CPM files, see :func:`load_prompt`) or a ready
    :class:`Conditioning` (e.g. a prompt being trained)."""
    if isinstance(spec, Conditioning):
        return BoundConditioning(sd, spec)
    if spec in FIXED_PROMPTS:
        return BoundConditioning(sd, FixedPrompt(spec))
    check_prompt_spec(spec)
    path = Path(spec)
    return BoundConditioning(sd, load_prompt(path, sd, **cpm_options), str(path))
