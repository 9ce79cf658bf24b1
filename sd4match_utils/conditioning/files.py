"""Prompt files: learned prompts saved as safetensors with metadata (format ``sd4match-prompt``, version 1).

One file holds one prompt of kind ``single`` / ``class`` (tensor ``embeddings``) or ``cpm`` (the tensors
:data:`CPM_KEYS`), with metadata naming the model it was learned on (identity and weight probe) and what rebuilds it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open

from ..cache import atomic_save_tensors
from ..models import same_weights, weight_probe
from .text import N_PROMPT_TOKENS

PROMPT_FORMAT = "sd4match-prompt"
PROMPT_KINDS = ("single", "class")
#: Tensors of a CPM file: the module's ``state_dict()`` keys, identical to the official ``ckpt.pt``.
CPM_KEYS = ("global_embeds", "positional_embedding", "alpha_cond", "linear_C.weight", "linear_C.bias",
            "linear_N.weight", "linear_N.bias")


def check_finite(tensors: dict[str, torch.Tensor], source) -> None:
    """Refuse tensors holding NaN or ±Inf: ``ValueError`` naming ``source`` and each bad key (with counts)."""
    bad = []
    for k, v in tensors.items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all():
            n_nan = int(torch.isnan(v).sum())
            bad.append(f"{k!r} ({n_nan} NaN, {int((~torch.isfinite(v)).sum()) - n_nan} Inf of {v.numel()} values)")
    if bad:
        raise ValueError(f"{source}: non-finite values in tensor {', '.join(bad)}; refusing to use it")


def write_prompt_file(path, sd, kind: str, tensors: dict[str, torch.Tensor], meta: dict | None = None,
                      text_dim: int | None = None):
    """Save prompt tensors (float32 safetensors, atomically) with format, kind, ``text_dim``, the model (identity
    and weight probe) and ``meta``. ``sd=None`` needs ``text_dim`` and records the model as unknown (no probe)."""
    header = {"format": PROMPT_FORMAT, "format_version": "1", "kind": kind}
    if sd is not None:
        header |= {"text_dim": sd.text_dim, "model": sd.identity, "model_probe": weight_probe(sd)}
    elif text_dim is None:
        raise ValueError("write_prompt_file: give sd or text_dim")
    else:
        header |= {"text_dim": int(text_dim), "model": {"model": "unknown"}}
    return atomic_save_tensors(path, {k: v.detach().float().cpu() for k, v in tensors.items()},
                               {**header, **(meta or {})})


def _open_prompt_file(path: Path, read) -> tuple[dict[str, str], dict]:
    """``(metadata, {key: read(handle, key)})`` of a readable sd4match prompt file (errors name the file)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            found = {k: read(f, k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable sd4match prompt file ({type(e).__name__}: {e})") from None
    if meta.get("format") != PROMPT_FORMAT:
        raise ValueError(f"{path}: not an sd4match prompt file (metadata format={meta.get('format')!r})")
    return meta, found


def read_prompt_file(path, sd, check_model: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A prompt file's tensors and metadata, checked (:func:`inspect_prompt_file`, finite values) and, with
    ``check_model``, refused when learned on other weights; a file without weight probe only warns.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file (and both models when they differ).
    """
    inspect_prompt_file(path)
    meta, tensors = _open_prompt_file(Path(path), lambda f, k: f.get_tensor(k))
    check_finite(tensors, path)
    if check_model and "model_probe" not in meta:
        try:
            theirs = json.loads(meta.get("model", "{}")).get("model", "unknown")
        except (ValueError, AttributeError):
            theirs = "unknown"
        warnings.warn(f"{path}: the file does not identify the model it belongs to (model {theirs!r}): it could not "
                      f"be checked against {sd.identity.get('model')!r}, only its width", UserWarning, stacklevel=2)
    elif check_model and int(meta.get("text_dim", sd.text_dim)) == sd.text_dim:
        if not same_weights(json.loads(meta["model_probe"]), weight_probe(sd)):
            theirs = json.loads(meta.get("model", "{}"))
            raise ValueError(f"{path}: prompt was learned for model {theirs.get('model')!r} "
                             f"(fingerprint {theirs.get('fingerprint')}), not for {sd.identity['model']!r} "
                             f"(fingerprint {sd.identity['fingerprint']}); pass check_model=False to force")
    return tensors, meta


def inspect_prompt_file(path) -> dict[str, str]:
    """Check a prompt file's structure from its header alone (no model, no tensor data): a known kind, the tensors
    that kind needs with sensible shapes, metadata that parses. Returns the metadata.

    Raises:
        FileNotFoundError: no such file.
        ValueError: anything else wrong, in one line naming the file.
    """
    path = Path(path)
    meta, shapes = _open_prompt_file(path, lambda f, k: tuple(f.get_slice(k).get_shape()))

    def meta_json(key, required=True):
        if key not in meta and required:
            raise ValueError(f"{path}: prompt file metadata lacks {key!r}")
        try:
            return json.loads(meta[key]) if key in meta else None
        except ValueError:
            raise ValueError(f"{path}: prompt file metadata {key!r} is not valid JSON ({meta[key][:60]!r})") from None

    kind = meta.get("kind")
    text_dim = meta_json("text_dim", required=False)
    if text_dim is not None and (not isinstance(text_dim, int) or text_dim < 1):
        raise ValueError(f"{path}: prompt file metadata text_dim must be a positive integer, got {text_dim!r}")
    if kind in PROMPT_KINDS:
        if "embeddings" not in shapes:
            raise ValueError(f"{path}: {kind} prompt file has no tensor 'embeddings' (tensors: {sorted(shapes)})")
        shape = shapes["embeddings"]
        if len(shape) != 3 or not 1 <= shape[1] <= N_PROMPT_TOKENS:  # the width is checked against the model
            raise ValueError(f"{path}: tensor 'embeddings' has shape {shape}, expected (rows, 1..{N_PROMPT_TOKENS}, "
                             f"text width)")
        categories = meta_json("categories")
        if kind == "single" and shape[0] != 1:
            raise ValueError(f"{path}: single prompt must have one row, tensor 'embeddings' has shape {shape}")
        if kind == "class" and (not isinstance(categories, list) or len(categories) != shape[0]
                                or not all(isinstance(c, str) for c in categories)):
            raise ValueError(f"{path}: class prompt metadata 'categories' must list one name per row of "
                             f"'embeddings' ({shape[0]}), got {str(categories)[:80]}")
    elif kind == "cpm":
        missing = [k for k in CPM_KEYS if k not in shapes]
        if missing:
            raise ValueError(f"{path}: CPM prompt file lacks tensor(s) {missing} (tensors: {sorted(shapes)})")
        for key in ("n_global", "n_cond", "dino_dim"):
            value = meta_json(key)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{path}: CPM prompt file metadata {key!r} must be an integer, got {value!r}")
    else:
        raise ValueError(f"{path}: unknown prompt kind {kind!r} in the metadata (expected single, class or cpm)")
    return meta
