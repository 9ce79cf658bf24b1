"""The one interface every prompt implements (:class:`Conditioning`, SPEC §3–§4) and the one entry point from a
prompt spec to the conditioning of a pair (:func:`make_conditioning`)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .cpm import ConditionalPrompt
from .files import inspect_prompt_file
from .learned import LearnedPrompt
from .text import FIXED_PROMPTS, FixedPrompt


@runtime_checkable
class Conditioning(Protocol):
    """What conditions the UNet for a pair of images: a ``(B, 77, D)`` text-encoder output per batch of pairs.

    Implemented by ``FixedPrompt``, ``LearnedPrompt`` and ``ConditionalPrompt``; :func:`make_conditioning` binds one
    to a model to condition one pair at a time (what evaluation does).
    """

    #: ``"text"``, ``"empty"``, ``"single"``, ``"class"`` or ``"cpm"``.
    kind: str
    #: ``True`` when the conditioning depends on the images of each pair (CPM), ``False`` when only on the category.
    pair_dependent: bool

    def condition(self, sd, samples) -> torch.Tensor:
        """``(B, 77, D)`` conditioning (text encoder dtype) of a batch of ``PairSample``-like objects,
        differentiable with respect to the prompt's own parameters (if any)."""

    def key(self, sample) -> str:
        """Pairs with equal keys get the same conditioning (so it is computed once and features can be reused)."""

    def describe(self) -> dict:
        """What ``metrics.json`` records under ``conditioning`` (``{"prompt": kind, ...}``)."""


def load_prompt(path, sd, check_model: bool = True, **cpm_options) -> LearnedPrompt | ConditionalPrompt:
    """Load any prompt file (Single, Class or CPM) as the module that produces its conditioning;
    ``cpm_options`` (``dino``, ``dino_cache``) go to :meth:`ConditionalPrompt.load`."""
    if inspect_prompt_file(path).get("kind") == "cpm":
        return ConditionalPrompt.load(path, sd, check_model, **cpm_options)
    return LearnedPrompt.load(path, sd, check_model)


class BoundConditioning:
    """A :class:`Conditioning` bound to model ``sd``: ``(1, 77, D)`` conditioning of one pair, without gradients,
    computed once per :meth:`Conditioning.key` unless pair-dependent (CPM). :meth:`describe` adds the prompt
    ``"file"`` when there is one."""

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
    """The conditioning of pairs by ``spec`` on model ``sd``: ``"text"`` / ``"empty"``, a prompt file path
    (``cpm_options`` as for :func:`load_prompt`) or a ready :class:`Conditioning` (e.g. a prompt being trained)."""
    if isinstance(spec, Conditioning):
        return BoundConditioning(sd, spec)
    if spec in FIXED_PROMPTS:
        return BoundConditioning(sd, FixedPrompt(spec))
    check_prompt_spec(spec)
    return BoundConditioning(sd, load_prompt(Path(spec), sd, **cpm_options), str(Path(spec)))
