"""Settings declared once (sd4match_utils.settings): every field of EvalSettings / TrainSettings is a command-line
option that reaches the settings, and only the fields marked ``result`` enter fingerprints and resume checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace

import pytest

from sd4match_utils.cli import build_parser
from sd4match_utils.evaluate import EvalSettings, settings_fingerprint
from sd4match_utils.settings import add_options, from_args, option, result_fields
from sd4match_utils.train import RUN_LENGTH, TrainSettings

EVAL_MINIMAL = ["evaluate", "--dataset", "spair", "--data-root", "data/a", "--out", "out"]
EVAL_FULL = ["evaluate", "--dataset", "pfpascal", "--data-root", "data/b", "--out", "out", "--split", "val",
             "--model", "tiny", "--prompt", "empty", "--layer", "2", "--timestep", "10", "--ensemble", "3",
             "--matcher", "nn,softmax", "--limit", "5", "--seed", "4", "--img-size", "64", "--latent", "mean",
             "--precision", "bf16", "--device", "cuda:1", "--batch-size", "2", "--cache-dir", "cache",
             "--dino", "tiny", "--dino-cache", "dino-cache"]
EVAL_EXPECTED = EvalSettings(
    dataset="pfpascal", data_root="data/b", split="val", model="tiny", prompt="empty", layer=2, timestep=10,
    ensemble=3, matchers=["nn", "softmax"], limit=5, seed=4, img_size=64, latent="mean", precision="bf16",
    device="cuda:1", batch_size=2, cache_dir="cache", dino="tiny", dino_cache="dino-cache")

TRAIN_MINIMAL = ["train", "--prompt-type", "single", "--dataset", "spair", "--data-root", "data/a", "--epochs", "2",
                 "--out", "out"]
TRAIN_FULL = ["train", "--prompt-type", "cpm", "--dataset", "pfpascal", "--data-root", "data/b", "--max-steps", "9",
              "--out", "out", "--model", "tiny", "--batch-size", "2", "--grad-accum", "3", "--lr", "0.5",
              "--layer", "0", "--timestep", "100", "--val-timestep", "20", "--precision", "bf16",
              "--device", "cuda:1", "--seed", "3", "--img-size", "32", "--n-tokens", "10", "--init", "text",
              "--latent", "mean", "--train-split", "val", "--val-split", "test", "--train-limit", "6",
              "--val-limit", "4", "--save-every", "3", "--gradient-checkpointing", "--lr-linear", "0.25",
              "--n-global", "5", "--n-cond", "5", "--cpm-mode", "image", "--cpm-features", "pooled",
              "--dino", "facebook/dinov2-small", "--dino-cache", "dino-cache"]
TRAIN_EXPECTED = TrainSettings(
    prompt_type="cpm", dataset="pfpascal", data_root="data/b", model="tiny", epochs=None, max_steps=9, batch_size=2,
    grad_accum=3, lr=0.5, layer=0, timestep=100, val_timestep=20, precision="bf16", device="cuda:1", seed=3,
    img_size=32, n_tokens=10, init="text", latent="mean", train_split="val", val_split="test", train_limit=6,
    val_limit=4, save_every=3, gradient_checkpointing=True, lr_linear=0.25, n_global=5, n_cond=5, cpm_mode="image",
    cpm_features="pooled", dino="facebook/dinov2-small", dino_cache="dino-cache")

KINDS = [("evaluate", EvalSettings, EVAL_MINIMAL, EVAL_FULL, EVAL_EXPECTED),
         ("train", TrainSettings, TRAIN_MINIMAL, TRAIN_FULL, TRAIN_EXPECTED)]


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command,cls", [(k[0], k[1]) for k in KINDS])
def test_every_field_has_an_option(command, cls):
    flags = {s for a in _subparser(command)._actions for s in a.option_strings}
    for f in fields(cls):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in flags, f"{cls.__name__}.{f.name} has no {flag} option on `sd4match {command}`"
        assert f.metadata.get("help") is not None or f.name in ("dataset", "data_root", "split", "seed",
                                                                "prompt_type"), f"{f.name} has no help"


@pytest.mark.parametrize("command,cls,minimal,full,expected", KINDS)
def test_parse_to_settings_round_trips(command, cls, minimal, full, expected):
    settings = from_args(cls, build_parser().parse_args(full))
    assert settings == expected
    # every field came from its option: none of them is left at what the minimal command line gives
    base = from_args(cls, build_parser().parse_args(minimal))
    same = [f.name for f in fields(cls) if getattr(base, f.name) == getattr(settings, f.name)]
    assert same == [], f"options that did not reach the settings: {same}"


def test_command_line_defaults_are_kept():
    ev = from_args(EvalSettings, build_parser().parse_args(EVAL_MINIMAL))
    assert (ev.model, ev.precision, ev.img_size, ev.matchers, ev.layer, ev.timestep, ev.batch_size) == \
        ("mini", "auto", None, ["kernel_softmax"], None, None, 8)
    tr = from_args(TrainSettings, build_parser().parse_args(TRAIN_MINIMAL))
    assert (tr.model, tr.precision, tr.epochs, tr.max_steps, tr.batch_size, tr.dino, tr.data_root) == \
        ("mini", "auto", 2, None, 3, "mini", "data/a")


def test_matcher_all_and_native_size():
    args = build_parser().parse_args(EVAL_MINIMAL + ["--matcher", "all", "--img-size", "native"])
    settings = from_args(EvalSettings, args)
    assert settings.img_size is None and len(settings.matchers) > 1 and args.matcher == "all"


@pytest.mark.parametrize("argv", [
    EVAL_MINIMAL + ["--no-such-option", "1"],
    TRAIN_MINIMAL + ["--no-such-option"],
    TRAIN_MINIMAL + ["--max-steps", "3"],  # --epochs and --max-steps exclude each other
    TRAIN_MINIMAL[:7] + ["--out", "out"],  # one of them is required
    EVAL_MINIMAL + ["--img-size", "big"],
])
def test_bad_command_lines_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2


def test_an_undeclared_option_is_an_error_not_a_silent_default():
    args = build_parser().parse_args(EVAL_MINIMAL)
    del args.batch_size
    with pytest.raises(AttributeError, match="batch_size"):
        from_args(EvalSettings, args)


@pytest.mark.parametrize("settings", [EVAL_EXPECTED, TRAIN_EXPECTED])
def test_only_result_fields_change_the_fingerprint(settings):
    def fingerprint(s):
        return settings_fingerprint({"settings": result_fields(s)})

    other = {int: lambda v: (v or 0) + 1, float: lambda v: v * 2, bool: lambda v: not v, str: lambda v: v + "x",
             list: lambda v: v[:1], type(None): lambda v: 7}
    for f in fields(settings):
        value = getattr(settings, f.name)
        changed = replace(settings, **{f.name: other[type(value)](value)})
        if f.metadata["result"]:
            assert fingerprint(changed) != fingerprint(settings), f.name
        else:
            assert fingerprint(changed) == fingerprint(settings), f.name


def test_result_classification():
    """The fields that do not change a run's result (pinned: changing them changes fingerprints and resume checks)."""
    free = lambda cls: {f.name for f in fields(cls) if not f.metadata["result"]}  # noqa: E731
    assert free(EvalSettings) == {"cache_dir", "dino_cache"}
    assert free(TrainSettings) == {"save_every", "dino_cache"}
    assert set(RUN_LENGTH) == {"epochs", "max_steps"} and not free(TrainSettings) & set(RUN_LENGTH)
    s = EvalSettings("spair", "data")
    assert set(result_fields(s)) == {f.name for f in fields(s)} - {"cache_dir", "dino_cache"}
    assert result_fields(s)["matchers"] is not s.matchers  # a copy, as dataclasses.asdict gives


def test_add_options_on_a_small_dataclass():
    @dataclass
    class Demo:
        name: str = option(help="required: no default")
        steps: int | None = option(None, "steps", one_of="length")
        epochs: int | None = option(None, "epochs", one_of="length")
        rate: float = option(0.5, "a float")
        fast: bool = option(False, "a switch", result=False)
        items: list[str] = option(help="comma list", flag="--item", cli_default="a", parse=lambda t: t.split(","),
                                  default_factory=lambda: ["a"])

    p = argparse.ArgumentParser()
    add_options(p, Demo)
    d = from_args(Demo, p.parse_args(["--name", "n", "--steps", "3", "--rate", "2", "--fast", "--item", "x,y"]))
    assert d == Demo("n", 3, None, 2.0, True, ["x", "y"])
    assert from_args(Demo, p.parse_args(["--name", "n", "--epochs", "1"])) == Demo("n", None, 1, 0.5, False, ["a"])
    assert "fast" not in result_fields(d) and result_fields(d)["items"] == ["x", "y"]
    for argv in (["--steps", "1"], ["--name", "n"], ["--name", "n", "--steps", "1", "--epochs", "1"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)


def test_train_resume_compares_the_result_fields_but_the_run_length(tiny_sd, synthetic_roots, tmp_path):
    from sd4match_utils.train import train

    base = dict(prompt_type="single", dataset="spair", data_root=str(synthetic_roots["spair"]), max_steps=1,
                batch_size=2, train_limit=4, val_limit=1, img_size=128, save_every=1)
    train(TrainSettings(**base), tmp_path, sd=tiny_sd, progress=False)
    # longer run, other checkpoint frequency and DINOv2 cache: resumed
    summary = train(TrainSettings(**{**base, "max_steps": 2, "save_every": 5, "dino_cache": str(tmp_path / "c")}),
                    tmp_path, resume=True, sd=tiny_sd, progress=False)
    assert summary["steps"] == 2
    with pytest.raises(ValueError, match="settings differ.*gradient_checkpointing"):
        train(TrainSettings(**{**base, "max_steps": 3, "gradient_checkpointing": True}), tmp_path, resume=True,
              sd=tiny_sd, progress=False)
