"""Conditioning of the UNet (SPEC §3–§4): what turns a pair into the ``(B, 77, D)`` cross-attention input.

Every prompt is a :class:`Conditioning`: :class:`FixedPrompt` (``"text"`` / ``"empty"``), :class:`LearnedPrompt`
(Single / Class) or :class:`ConditionalPrompt` (CPM); :func:`make_conditioning` turns a spec (fixed prompt name,
prompt file or prompt module) into the per-pair conditioning evaluation uses. Modules, each importing only those
above it: ``text``, ``files`` (prompt files), ``learned``, ``cpm``, ``factory`` (the interface and
:func:`make_conditioning`), ``official`` (importing the paper's ``ckpt.pt`` / ``caption.pt``).
"""

from .cpm import CPM_FEATURES, CPM_MODES, ConditionalPrompt, check_keys, check_tensors, cpm_shapes
from .factory import BoundConditioning, Conditioning, check_prompt_spec, load_prompt, make_conditioning
from .files import (CPM_KEYS, PROMPT_FORMAT, PROMPT_KINDS, check_finite, inspect_prompt_file, read_prompt_file,
                    write_prompt_file)
from .learned import LearnedPrompt, random_vocab_init, text_init
from .official import (OFFICIAL_KINDS, UNKNOWN_MODEL, cpm_from_state_dict, import_official, load_official,
                       prompts_from_captions)
from .text import (CATEGORY_ALIASES, FIXED_PROMPTS, N_PROMPT_TOKENS, TEMPLATE, FixedPrompt, UnknownCategoryError,
                   category_word, encode_embeddings, encode_rows, encode_text, frame_rows, prompt_text,
                   resolve_category, special_ids, template_text, token_embeddings)

__all__ = [
    "BoundConditioning", "CATEGORY_ALIASES", "CPM_FEATURES", "CPM_KEYS", "CPM_MODES", "Conditioning",
    "ConditionalPrompt", "FIXED_PROMPTS", "FixedPrompt", "LearnedPrompt", "N_PROMPT_TOKENS", "OFFICIAL_KINDS",
    "PROMPT_FORMAT", "PROMPT_KINDS", "TEMPLATE", "UNKNOWN_MODEL", "UnknownCategoryError", "category_word",
    "check_finite", "check_keys", "check_prompt_spec", "check_tensors", "cpm_from_state_dict", "cpm_shapes",
    "encode_embeddings", "encode_rows", "encode_text", "frame_rows", "import_official", "inspect_prompt_file",
    "load_official", "load_prompt", "make_conditioning", "prompt_text", "prompts_from_captions", "random_vocab_init",
    "read_prompt_file", "resolve_category", "special_ids", "template_text", "text_init", "token_embeddings",
    "write_prompt_file",
]
