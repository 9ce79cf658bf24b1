"""The one interface every prompt implements: fixed text, learned Single / Class and the CPM (SPEC §3–§4)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Conditioning(Protocol):
    """What conditions the UNet for a pair of images: a ``(B, 77, D)`` text-encoder output per batch of pairs.

    Implemented by :class:`~sd4match_utils.conditioning.FixedPrompt` (``"text"`` / ``"empty"``),
    :class:`~sd4match_utils.conditioning.LearnedPrompt` (Single / Class) and
    :class:`~sd4match_utils.conditioning.ConditionalPrompt` (CPM). Bind one to a model with
    :func:`~sd4match_utils.conditioning.make_conditioning` to condition one pair at a time (what evaluation does).
    """

    #: ``"text"``, ``"empty"``, ``"single"``, ``"class"`` or ``"cpm"``.
    kind: str
    #: ``True`` when the conditioning depends on the images of each pair (CPM), ``False`` when only on the category.
    pair_dependent: bool

    def condition(self, sd, samples) -> torch.Tensor:
        """Conditioning of a batch of pairs (``PairSample``-like objects): ``(B, 77, D)`` in the text encoder's
        dtype; differentiable with respect to the prompt's own parameters (if it has any)."""
        ...

    def key(self, sample) -> str:
        """Pairs with equal keys get the same conditioning (so it is computed once and features can be reused)."""
        ...

    def describe(self) -> dict:
        """What ``metrics.json`` records under ``conditioning`` (``{"prompt": kind, ...}``)."""
        ...
