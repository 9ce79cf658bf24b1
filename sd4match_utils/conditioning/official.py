"""Importing the prompts published with the paper's code into this package's prompt files (SPEC §4).

Two pickled formats exist, both read with ``torch.load(..., weights_only=True)`` (tensors, dicts and plain
values only: a file holding any other pickled object is refused, so nothing in it is executed):

* ``ckpt.pt`` — a CPM: a plain state dict with exactly the keys ``global_embeds (1, G, D)``,
  ``positional_embedding (1, C, D)``, ``alpha_cond (1, C, D)``, ``linear_C.weight (D, 2c)``,
  ``linear_C.bias (D,)``, ``linear_N.weight (256, 256)``, ``linear_N.bias (256,)`` (SD 2-1 with DINOv2-base:
  D = 1024, c = 768, G = 25, C = 50). A ``module.`` prefix (a state dict saved from a DDP wrapper) is removed.
* ``caption.pt`` — Single or Class prompts: a dict from ``"dataset"`` (Single) or category names (Class) to the
  full token-embedding sequence ``(1, 77, D)`` (BOS and EOS rows included). The learned prompt is rows 1..75;
  rows 0 and 76 must be this model's BOS and EOS embeddings (token + position), which is checked when the model
  is given.

Neither import needs the model: without one the width D comes from the file, and the prompt file records the
model as :data:`UNKNOWN_MODEL` (no weight probe), so loading it checks the width only (with a warning). Tensors
holding NaN or Inf are refused, naming the key.

Both become ``<out>/prompt.safetensors`` (kinds ``cpm``, ``single``, ``class``), loadable with
:func:`~sd4match_utils.conditioning.load_prompt` and usable as ``sd4match evaluate --prompt <out>/prompt.safetensors``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..cache import file_sha256
from .cpm import ConditionalPrompt, check_keys, check_tensors, cpm_shapes
from .files import CPM_KEYS, check_finite
from .learned import LearnedPrompt
from .text import N_PROMPT_TOKENS, frame_rows

OFFICIAL_KINDS = ("cpm", "caption")
SINGLE_KEY = "dataset"
#: The model record of a prompt imported without ``--model`` (no weight probe: only its width is checked).
UNKNOWN_MODEL = "unknown (imported without --model)"


def load_official(path) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch file, or it holds objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        blocked = next((line for line in lines if "GLOBAL" in line), None)
        if blocked:  # a pickled object of some class or function: not executed, not loaded
            raise ValueError(f"{path}: refused: it holds objects other than tensors and plain containers, which "
                             f"are not loaded (weights_only=True): {blocked}") from e
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
        raise ValueError(f"{path}: not a readable torch checkpoint ({detail})") from e
    except Exception as e:  # noqa: BLE001 - zip / pickle format errors of many types
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


def cpm_from_state_dict(state: dict, sd, dino: str = "facebook/dinov2-base", features: str = "patch",
                        source="state dict") -> ConditionalPrompt:
    """A :class:`ConditionalPrompt` holding an official CPM state dict, checked against model ``sd`` (``None``:
    the text width D is read from ``global_embeds`` / ``linear_C``).

    G, C and the mode (``pair`` when ``linear_C`` takes 2c channels, ``image`` when c) are read from the shapes;
    c is the width of ``dino`` (known for the public ids and ``tiny`` without loading weights). ``features``
    (patch / pooled) cannot be told from shapes and must be given. The DINOv2 is attached on first use.

    Raises:
        ValueError: missing or unexpected keys, or shapes that do not fit (expected vs found), naming ``source``.
    """
    from ..dino import dino_dim

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a state dict of tensors, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    check_keys(state, CPM_KEYS, source, "an official CPM checkpoint")
    check_finite(state, source)
    w = state["linear_C.weight"]
    text_dim = sd.text_dim if sd is not None else int(w.shape[0]) if w.ndim else 0
    c = dino_dim(dino)
    g = state["global_embeds"].shape[1] if state["global_embeds"].ndim == 3 else 0
    n = state["positional_embedding"].shape[1] if state["positional_embedding"].ndim == 3 else 0
    mode = "image" if state["linear_C.weight"].ndim == 2 and state["linear_C.weight"].shape[1] == c else "pair"
    expected = cpm_shapes(text_dim, c, g, n, mode)
    check_tensors(state, expected, source)
    prompt = ConditionalPrompt(text_dim, c, g, n, mode, features)
    prompt.load_state_dict({k: v.float() for k, v in state.items()})
    prompt.dino_info = {"spec": dino, "model": dino, "dim": c, "n_patches": 256}
    return prompt.to(sd.device) if sd is not None else prompt


def prompts_from_captions(captions: dict, sd=None, source="captions", check_model: bool = True) -> LearnedPrompt:
    """A Single (key ``"dataset"``) or Class (category keys) :class:`LearnedPrompt` from official caption
    embeddings ``{key: (1, 77, D)}``; the prompt is rows 1..75.

    ``sd=None``: D is read from the file (all entries must share it) and nothing is checked against a model.

    Raises:
        ValueError: not such a dict, a shape other than ``(1, 77, D)``, NaN / Inf values, or (``check_model``
            with ``sd``) BOS / EOS rows that are not this model's (the prompt was learned for another text encoder).
    """
    if not isinstance(captions, dict) or not captions:
        raise ValueError(f"{source}: expected a non-empty dict of caption embeddings, found {type(captions).__name__}")
    bad_type = [str(k) for k, v in captions.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad_type:
        raise ValueError(f"{source}: expected str → tensor entries; bad entries {bad_type}")
    first = next(iter(captions.values()))
    width = sd.text_dim if sd is not None else int(first.shape[-1]) if first.ndim else 0
    want = (1, N_PROMPT_TOKENS + 2, width)
    bad = [f"{k!r}: expected {want}, found {tuple(v.shape)}" for k, v in captions.items() if tuple(v.shape) != want]
    if bad:
        note = "" if sd is not None else " (D read from the first entry: every entry needs the same (1, 77, D))"
        raise ValueError(f"{source}: caption embeddings of the wrong shape: " + "; ".join(bad) + note)
    if SINGLE_KEY in captions and len(captions) > 1:
        raise ValueError(f"{source}: has {SINGLE_KEY!r} (Single) and category keys (Class): "
                         f"{sorted(captions)}")
    check_finite(captions, source)
    if check_model and sd is not None:
        bos, eos, _ = frame_rows(sd, N_PROMPT_TOKENS)
        for k, v in captions.items():
            v = v.float().to(bos.device)
            for name, row, ref in (("BOS", v[0, 0], bos[0]), ("EOS", v[0, -1], eos[0])):
                if not torch.allclose(row, ref, rtol=1e-2, atol=1e-3):
                    raise ValueError(f"{source}: entry {k!r}: the {name} row is not this model's {name} embedding "
                                     f"(was it learned for another text encoder?); pass check_model=False to force")
    device = sd.device if sd is not None else torch.device("cpu")
    if SINGLE_KEY in captions:
        return LearnedPrompt("single", captions[SINGLE_KEY][:, 1:-1].float().to(device))
    cats = sorted(captions)
    emb = torch.cat([captions[k][:, 1:-1].float() for k in cats])
    return LearnedPrompt("class", emb.to(device), cats)


def import_official(kind: str, file, out_dir, sd=None, dino: str = "facebook/dinov2-base", features: str = "patch",
                    check_model: bool = True) -> Path:
    """Convert an official ``ckpt.pt`` (``kind="cpm"``) or ``caption.pt`` (``kind="caption"``) into
    ``<out_dir>/prompt.safetensors``; returns that path. The metadata records the source file and its SHA-256.

    With model ``sd`` the file is checked against it (widths; caption: BOS / EOS rows) and the prompt records
    its identity and weight probe. Without (``sd=None``, no download needed) the width comes from the file and
    the model is recorded as :data:`UNKNOWN_MODEL`."""
    if kind not in OFFICIAL_KINDS:
        raise ValueError(f"kind must be one of {OFFICIAL_KINDS}, got {kind!r}")
    obj = load_official(file)
    if kind == "cpm":
        prompt = cpm_from_state_dict(obj, sd, dino, features, source=file)
    else:
        prompt = prompts_from_captions(obj, sd, source=file, check_model=check_model)
    extra = {"source": "official", "official_kind": kind, "official_file": str(file),
             "official_sha256": file_sha256(file)}
    if sd is None:
        extra["model"] = {"model": UNKNOWN_MODEL}
    return prompt.save(Path(out_dir) / "prompt.safetensors", sd, extra)
