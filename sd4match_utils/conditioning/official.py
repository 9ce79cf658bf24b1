"""Importing the paper's published prompts into prompt files (SPEC §4): ``ckpt.pt`` (a CPM state dict with the
:data:`CPM_KEYS`, possibly ``module.``-prefixed) and ``caption.pt`` (``{"dataset" or category: (1, 77, D)}``, rows
1..75 being the learned prompt). Both are read with ``weights_only=True``, so no pickled object is executed.

Without the model, D comes from the file and the prompt records the model as :data:`UNKNOWN_MODEL` (no weight
probe), so loading it checks the width only (with a warning).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..cache import file_sha256
from ..dino import dino_dim
from .cpm import ConditionalPrompt, check_keys, check_tensors, cpm_shapes
from .files import CPM_KEYS, check_finite
from .learned import LearnedPrompt
from .text import N_PROMPT_TOKENS, frame_rows

OFFICIAL_KINDS = ("cpm", "caption")
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
        if blocked:
            raise ValueError(f"{path}: refused: it holds objects other than tensors and plain containers, which "
                             f"are not loaded (weights_only=True): {blocked}") from e
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
        raise ValueError(f"{path}: not a readable torch checkpoint ({detail})") from e
    except Exception as e:  # noqa: BLE001 - zip / pickle format errors of many types
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


def cpm_from_state_dict(state: dict, sd, dino: str = "facebook/dinov2-base", features: str = "patch",
                        source="state dict") -> ConditionalPrompt:
    """A :class:`ConditionalPrompt` holding an official CPM state dict, checked against model ``sd`` (``None``:
    D read from ``linear_C``). G, C and the mode are read from the shapes, c is the width of ``dino`` (attached
    on first use); ``features`` cannot be told from shapes.

    Raises:
        ValueError: missing or unexpected keys, or shapes that do not fit (expected vs found), naming ``source``.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a state dict of tensors, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    check_keys(state, CPM_KEYS, source, "an official CPM checkpoint")
    check_finite(state, source)
    w = state["linear_C.weight"]
    text_dim = sd.text_dim if sd is not None else int(w.shape[0]) if w.ndim else 0
    c = dino_dim(dino)
    g, n = (state[k].shape[1] if state[k].ndim == 3 else 0 for k in ("global_embeds", "positional_embedding"))
    mode = "image" if w.ndim == 2 and w.shape[1] == c else "pair"
    check_tensors(state, cpm_shapes(text_dim, c, g, n, mode), source)
    prompt = ConditionalPrompt(text_dim, c, g, n, mode, features)
    prompt.load_state_dict({k: v.float() for k, v in state.items()})
    prompt.dino_info = {"spec": dino, "model": dino, "dim": c, "n_patches": 256}
    return prompt.to(sd.device) if sd is not None else prompt


def prompts_from_captions(captions: dict, sd=None, source="captions", check_model: bool = True) -> LearnedPrompt:
    """A Single (key ``"dataset"``) or Class (category keys) :class:`LearnedPrompt` from official caption
    embeddings ``{key: (1, 77, D)}``; ``sd=None``: D is read from the first entry, nothing checked against a model.

    Raises:
        ValueError: not such a dict, another shape, NaN / Inf values, or (``check_model`` with ``sd``) BOS / EOS
            rows that are not this model's.
    """
    if not isinstance(captions, dict) or not captions:
        raise ValueError(f"{source}: expected a non-empty dict of caption embeddings, found {type(captions).__name__}")
    bad_type = [str(k) for k, v in captions.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad_type:
        raise ValueError(f"{source}: expected str → tensor entries; bad entries {bad_type}")
    first = next(iter(captions.values()))
    want = (1, N_PROMPT_TOKENS + 2, sd.text_dim if sd is not None else int(first.shape[-1]) if first.ndim else 0)
    bad = [f"{k!r}: expected {want}, found {tuple(v.shape)}" for k, v in captions.items() if tuple(v.shape) != want]
    if bad:
        note = "" if sd is not None else " (D read from the first entry: every entry needs the same (1, 77, D))"
        raise ValueError(f"{source}: caption embeddings of the wrong shape: " + "; ".join(bad) + note)
    if "dataset" in captions and len(captions) > 1:
        raise ValueError(f"{source}: has 'dataset' (Single) and category keys (Class): {sorted(captions)}")
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
    if "dataset" in captions:
        return LearnedPrompt("single", captions["dataset"][:, 1:-1].float().to(device))
    cats = sorted(captions)
    return LearnedPrompt("class", torch.cat([captions[k][:, 1:-1].float() for k in cats]).to(device), cats)


def import_official(kind: str, file, out_dir, sd=None, dino: str = "facebook/dinov2-base", features: str = "patch",
                    check_model: bool = True) -> Path:
    """Convert an official ``ckpt.pt`` (``kind="cpm"``) or ``caption.pt`` (``kind="caption"``) into
    ``<out_dir>/prompt.safetensors`` (returned), recording the source file and its SHA-256. With ``sd`` the
    file is checked against the model and the prompt records it; without, see the module docstring."""
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
