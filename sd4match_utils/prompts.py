"""Text conditioning of the UNet: the fixed prompts of the baselines (SPEC §3).

``"text"`` is the template ``"a photo of a {category}"``; ``"empty"`` is the empty string (which the original
code could not handle). Both go through the frozen CLIP text encoder padded to 77 tokens → ``(B, 77, D)``.
"""

from __future__ import annotations

import hashlib
import re

import torch

FIXED_PROMPTS = ("text", "empty")
TEMPLATE = "a photo of a {}"


def category_word(category: str) -> str:
    """The word used in the template: PF-Willow sub-classes ``car(G)`` → ``car``, ``winebottle(wC)`` →
    ``winebottle``; everything else unchanged."""
    return re.sub(r"\(.*\)$", "", category).strip()


#: Cross-dataset mapping for Class prompts (SPEC §8: PF-Pascal prompts evaluated on PF-Willow). A category the
#: prompt does not know is first reduced to its word (:func:`category_word`: ``car(G)`` → ``car``), then mapped
#: here to a PF-Pascal / SPair-71k category (:func:`resolve_category`).
CATEGORY_ALIASES = {"winebottle": "bottle", "duck": "bird", "airplane": "aeroplane", "motorcycle": "motorbike",
                    "tv": "tvmonitor"}


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


def conditioning_key(cond: torch.Tensor) -> str:
    """A short content hash of a conditioning tensor (used in cache keys)."""
    return hashlib.sha256(cond.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# Learned prompts (SPEC §3): input embeddings that replace token + position embedding between BOS and EOS.
# --------------------------------------------------------------------------------------------------------------

N_PROMPT_TOKENS = 75
PROMPT_KINDS = ("single", "class")
PROMPT_FORMAT = "sd4match-prompt"


def _special_ids(sd) -> tuple[int, int, int]:
    tok = sd.tokenizer
    return tok.bos_token_id, tok.eos_token_id, tok.pad_token_id


def token_embeddings(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's own input embeddings, token + position: ``(B, 77)`` ids → ``(B, 77, D)``."""
    return text_encoder.embeddings(input_ids=input_ids)


def encode_embeddings(text_encoder, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Run the frozen CLIP encoder on ready-made input rows (no position embedding is added here).

    Same path as ``CLIPTextModel.forward`` after its embedding layer: causal mask → encoder → final layer norm.
    Differentiable with respect to ``inputs_embeds``.

    Args:
        inputs_embeds: ``(B, 77, D)``.

    Returns:
        ``(B, 77, D)`` conditioning for the UNet.
    """
    from transformers.masking_utils import create_causal_mask

    x = inputs_embeds.to(text_encoder.dtype)
    import inspect

    kwargs = {"config": text_encoder.config, "inputs_embeds": x, "attention_mask": None}
    params = inspect.signature(create_causal_mask).parameters
    for name in ("cache", "past_key_values", "cache_position"):  # differs across transformers 5.x releases
        if name in params:
            kwargs[name] = None
    mask = create_causal_mask(**kwargs)
    out = text_encoder.encoder(inputs_embeds=x, attention_mask=mask, is_causal=True)
    return text_encoder.final_layer_norm(out.last_hidden_state)


def frame_rows(sd, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed rows around ``n_tokens`` learned rows, as the tokenizer would frame a sentence of that length.

    Returns:
        ``bos (1, D)`` = token(BOS) + pos(0); ``eos (1, D)`` = token(EOS) + pos(n_tokens + 1);
        ``pad (75 - n_tokens, D)`` = token(pad) + pos(n_tokens + 2 ...) (empty when ``n_tokens = 75``).
    """
    bos, eos, pad = _special_ids(sd)
    ids = torch.full((1, 77), pad, dtype=torch.long, device=sd.device)
    ids[0, 0], ids[0, n_tokens + 1] = bos, eos
    with torch.no_grad():
        rows = token_embeddings(sd.text_encoder, ids)[0].float()
    return rows[:1], rows[n_tokens + 1 : n_tokens + 2], rows[n_tokens + 2 :]


def random_vocab_init(sd, n_tokens: int = N_PROMPT_TOKENS, count: int = 1, generator=None) -> torch.Tensor:
    """SPEC §3 initialisation: embed ``[BOS, n random vocabulary ids, EOS]`` (token + position) and keep the
    ``n`` middle rows. Special tokens are never drawn. Returns ``(count, n_tokens, D)`` float32."""
    bos, eos, pad = _special_ids(sd)
    vocab = sd.text_encoder.config.vocab_size
    allowed = torch.tensor([i for i in range(vocab) if i not in {bos, eos, pad}])
    out = []
    for _ in range(count):
        pick = allowed[torch.randint(len(allowed), (n_tokens,), generator=generator)]
        ids = torch.full((1, 77), pad, dtype=torch.long)
        ids[0, 0], ids[0, 1 : n_tokens + 1], ids[0, n_tokens + 1] = bos, pick, eos
        with torch.no_grad():
            out.append(token_embeddings(sd.text_encoder, ids.to(sd.device))[0, 1 : n_tokens + 1].float().cpu())
    return torch.stack(out)


def text_init(sd, texts: list[str], n_tokens: int = N_PROMPT_TOKENS) -> torch.Tensor:
    """Initialise from captions: rows 1..n of each caption's token + position embedding (padded as the
    tokenizer pads). Returns ``(len(texts), n_tokens, D)`` float32."""
    ids = sd.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return token_embeddings(sd.text_encoder, ids.to(sd.device))[:, 1 : n_tokens + 1].float().cpu()


class LearnedPrompt(torch.nn.Module):
    """Single (one prompt per dataset) or Class (one per category) learned prompt.

    Parameter ``embeddings``: ``(K, n_tokens, D)``, K = 1 for Single, the number of categories for Class (indexed by
    the sorted category list). :meth:`forward` frames the rows as ``[BOS | P_1..P_n | EOS | pad…]`` and runs the
    frozen text encoder, giving the UNet's ``(B, 77, D)`` conditioning.
    """

    pair_dependent = False  # the conditioning depends only on the category, never on the images

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
        """New prompt; ``init`` is ``"random"`` (SPEC: random vocabulary ids), ``"text"`` (the template of each
        category, or ``"a photo of a object"`` for Single) or ``"empty"``."""
        categories = sorted(categories or [])
        count = len(categories) if kind == "class" else 1
        if init == "random":
            emb = random_vocab_init(sd, n_tokens, count, torch.Generator().manual_seed(seed))
        elif init in ("text", "empty"):
            names = categories if kind == "class" else ["object"]
            emb = text_init(sd, [prompt_text(init, c) for c in names], n_tokens)
        else:
            raise ValueError(f"init must be 'random', 'text' or 'empty', got {init!r}")
        return cls(kind, emb.to(sd.device), categories)

    def rows(self, categories: list[str]) -> torch.Tensor:
        """The learned rows for each category: ``(B, n_tokens, D)``. A Class prompt maps a category it does not
        know through :func:`resolve_category` (PF-Willow ``winebottle(M)`` → ``bottle``)."""
        if self.kind == "single":
            return self.embeddings.expand(len(categories), -1, -1)
        names = [resolve_category(c, self.categories) for c in categories]
        if None in names:
            missing = sorted({c for c, n in zip(categories, names) if n is None})
            raise KeyError(f"class prompt has no entry for {missing} (nor through CATEGORY_ALIASES); "
                           f"it knows {self.categories}")
        return self.embeddings[[self.categories.index(n) for n in names]]

    def forward(self, sd, categories: list[str]) -> torch.Tensor:
        """Conditioning for a batch of categories: ``(B, 77, D)`` in the text encoder's dtype."""
        rows = self.rows(categories)
        bos, eos, pad = frame_rows(sd, self.n_tokens)
        b = rows.shape[0]
        seq = torch.cat([bos.expand(b, -1, -1), rows.to(bos.device), eos.expand(b, -1, -1),
                         pad.expand(b, -1, -1)], dim=1)
        return encode_embeddings(sd.text_encoder, seq)

    # ------------------------------------------------------------------------- the interface training uses
    def condition(self, sd, samples) -> torch.Tensor:
        """Conditioning of a batch of pairs (``PairSample``-like objects with ``.category``): ``(B, 77, D)``."""
        return self(sd, [s.category for s in samples])

    def cache_key(self, sample) -> str:
        """Pairs with equal keys get the same conditioning (so features can be reused across them)."""
        return "*" if self.kind == "single" else resolve_category(sample.category, self.categories) or sample.category

    def param_groups(self, lr: float) -> list[dict]:
        """Adam parameter groups (one learning rate for the embeddings)."""
        return [{"params": [self.embeddings], "lr": lr}]

    def describe(self) -> dict:
        return {"prompt": self.kind, "n_tokens": self.n_tokens, "categories": self.categories}

    # ---------------------------------------------------------------------------------------------- files
    def save(self, path, sd, extra: dict | None = None):
        """Write the prompt as safetensors (tensor ``embeddings``) with metadata: format, kind, categories,
        shape, the model it belongs to (identity and a weight probe; ``sd=None``: unknown), and ``extra``."""
        meta = {"categories": self.categories, "n_tokens": self.n_tokens, **(extra or {})}
        return write_prompt_file(path, sd, self.kind, {"embeddings": self.embeddings}, meta,
                                 text_dim=self.embeddings.shape[2])

    @classmethod
    def load(cls, path, sd, check_model: bool = True) -> "LearnedPrompt":
        """Read a Single / Class prompt file and check it fits ``sd`` (see :func:`read_prompt_file`)."""
        import json

        tensors, meta = read_prompt_file(path, sd, check_model)
        emb = tensors["embeddings"]
        if emb.ndim != 3 or emb.shape[2] != sd.text_dim:
            raise ValueError(f"{path}: prompt of shape {tuple(emb.shape)} does not fit this model, whose text "
                             f"encoder is {sd.text_dim}-d (expected shape {(emb.shape[0], emb.shape[1], sd.text_dim)})")
        prompt = cls(meta["kind"], emb.to(sd.device), json.loads(meta["categories"]))
        prompt.metadata = meta
        return prompt


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
    """Save prompt tensors (safetensors, atomically) with the metadata every prompt file carries: format, kind,
    ``text_dim``, the model it was learned on (identity and weight probe), plus ``meta``.

    ``sd=None`` (a prompt imported without its model) needs ``text_dim``; the file then records the model as
    unknown and has no weight probe, so loading it can check its width only."""
    from .cache import atomic_save_tensors
    from .models import weight_probe

    if sd is None:
        if text_dim is None:
            raise ValueError("write_prompt_file: give sd or text_dim")
        header = {"format": PROMPT_FORMAT, "format_version": "1", "kind": kind, "text_dim": int(text_dim),
                  "model": {"model": "unknown"}}
    else:
        header = {"format": PROMPT_FORMAT, "format_version": "1", "kind": kind, "text_dim": sd.text_dim,
                  "model": sd.identity, "model_probe": weight_probe(sd)}
    return atomic_save_tensors(path, {k: v.detach().float().cpu() for k, v in tensors.items()},
                               {**header, **(meta or {})})


def read_prompt_file(path, sd, check_model: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a prompt file's tensors and metadata, checking that it is one and that it belongs to ``sd``.

    A file that records no weight probe (imported without its model) only warns that the model could not be
    checked; its width is still checked by the loaders.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a prompt file, a tensor with NaN / Inf values (named), or learned on other weights (the
            message names both models).
    """
    import json
    from pathlib import Path

    from safetensors import safe_open

    from .models import same_weights, weight_probe

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable sd4match prompt file ({e})") from e
    if meta.get("format") != PROMPT_FORMAT:
        raise ValueError(f"{path}: not an sd4match prompt file (format={meta.get('format')!r})")
    inspect_prompt_file(path)  # tensor keys, shapes and metadata, each error naming the file
    check_finite(tensors, path)
    if check_model and "model_probe" not in meta:
        import warnings

        try:
            theirs = json.loads(meta.get("model", "{}")).get("model", "unknown")
        except (ValueError, AttributeError):
            theirs = "unknown"
        warnings.warn(f"{path}: the file does not identify the model it belongs to (model {theirs!r}): it could not "
                      f"be checked against {sd.identity.get('model')!r}, only its width", UserWarning, stacklevel=2)
    if check_model and "model_probe" in meta and int(meta.get("text_dim", sd.text_dim)) == sd.text_dim:
        if not same_weights(json.loads(meta["model_probe"]), weight_probe(sd)):
            theirs = json.loads(meta.get("model", "{}"))
            raise ValueError(f"{path}: prompt was learned for model {theirs.get('model')!r} "
                             f"(fingerprint {theirs.get('fingerprint')}), not for {sd.identity['model']!r} "
                             f"(fingerprint {sd.identity['fingerprint']}); pass check_model=False to force")
    return tensors, meta


def load_prompt(path, sd, check_model: bool = True, **cpm_options):
    """Load any prompt file (Single, Class or CPM) as the module that produces its conditioning.

    ``cpm_options`` (``dino``, ``dino_cache``) go to :meth:`ConditionalPrompt.load` and are ignored otherwise."""
    _, meta = read_prompt_file(path, sd, check_model=False)
    if meta.get("kind") == "cpm":
        from .cpm import ConditionalPrompt

        return ConditionalPrompt.load(path, sd, check_model, **cpm_options)
    return LearnedPrompt.load(path, sd, check_model)


def inspect_prompt_file(path) -> dict[str, str]:
    """Check a prompt file's structure from its header alone (no model, no tensor data read): it is a readable
    sd4match prompt file of a known kind, holds the tensors that kind needs with sensible shapes, and its metadata
    parses. Returns the metadata.

    Raises:
        FileNotFoundError: no such file.
        ValueError: anything else wrong, in one line naming the file.
    """
    import json
    from pathlib import Path

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable sd4match prompt file ({type(e).__name__}: {e})") from None
    if meta.get("format") != PROMPT_FORMAT:
        raise ValueError(f"{path}: not an sd4match prompt file (metadata format={meta.get('format')!r})")

    def meta_json(key, required=True):
        if key not in meta:
            if required:
                raise ValueError(f"{path}: prompt file metadata lacks {key!r}")
            return None
        try:
            return json.loads(meta[key])
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
        if kind == "class":
            if (not isinstance(categories, list) or not all(isinstance(c, str) for c in categories)
                    or len(categories) != shape[0]):
                raise ValueError(f"{path}: class prompt metadata 'categories' must list one name per row of "
                                 f"'embeddings' ({shape[0]}), got {str(categories)[:80]}")
    elif kind == "cpm":
        from .cpm import CPM_KEYS

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
