"""Runs never give a silently wrong result or lose work: clear one-line errors (exit 2) before the model loads,
output folders locked while a run uses them, no silent overwrite of a training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd4match_utils.cli import build_parser, main


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the errors below must come before it."""
    import sd4match_utils.models as models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_sd", refuse)


def _evaluate(root, out, *extra):
    return ["evaluate", "--dataset", "spair", "--data-root", str(root), "--split", "test", "--ensemble", "1",
            "--img-size", "128", "--matcher", "nn", "--limit", "2", "--quiet", "--out", str(out), *extra]


def _train(root, out, *extra):
    return ["train", "--prompt-type", "single", "--dataset", "spair", "--data-root", str(root), "--max-steps", "1",
            "--batch-size", "1", "--train-limit", "1", "--val-limit", "1", "--img-size", "128", "--save-every", "1",
            "--quiet", "--out", str(out), *extra]


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def _spair_with_split(root: Path, tmp_path: Path, split: str, lines: list[str]) -> Path:
    """The synthetic SPair-71k root (linked) with ``split``'s layout file replaced by ``lines``."""
    new = tmp_path / "SPair-71k"
    (new / "Layout" / "large").mkdir(parents=True)
    for name in ("JPEGImages", "PairAnnotation"):
        (new / name).symlink_to(root / name)
    for f in (root / "Layout" / "large").iterdir():
        (new / "Layout" / "large" / f.name).write_text(f.read_text())
    (new / "Layout" / "large" / f"{split}.txt").write_text("".join(f"{l}\n" for l in lines))
    return new


# ------------------------------------------------------------------------------ errors before the model loads


def test_empty_split_and_limit_zero(synthetic_roots, tmp_path, capsys, no_model):
    empty = _spair_with_split(synthetic_roots["spair"], tmp_path, "test", [])
    assert main(_evaluate(empty, tmp_path / "a")) == 2
    _one_line_error(capsys, "no pairs in", str(empty / "Layout" / "large" / "test.txt"))
    args = _evaluate(synthetic_roots["spair"], tmp_path / "b")
    args[args.index("--limit") + 1] = "0"
    assert main(args) == 2
    _one_line_error(capsys, "no pairs in", "test.txt", "limit 0")


def test_train_empty_validation_split(synthetic_roots, tmp_path, capsys, no_model):
    root = _spair_with_split(synthetic_roots["spair"], tmp_path, "val", [])
    assert main(_train(root, tmp_path / "run")) == 2  # was a raw StopIteration after training
    _one_line_error(capsys, "no validation pairs in", str(root / "Layout" / "large" / "val.txt"))
    assert main(_train(synthetic_roots["spair"], tmp_path / "run2", "--val-limit", "0")) == 2
    _one_line_error(capsys, "no validation pairs", "limit 0")


@pytest.mark.parametrize("device, needle", [("bogus", "'bogus'"), ("cuda", "CUDA is not available"),
                                            ("cuda:3", "CUDA is not available")])
def test_bad_device(synthetic_roots, tmp_path, capsys, no_model, monkeypatch, device, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(_evaluate(synthetic_roots["spair"], tmp_path / "a", "--device", device)) == 2
    _one_line_error(capsys, needle)
    assert main(_train(synthetic_roots["spair"], tmp_path / "b", "--device", device)) == 2
    _one_line_error(capsys, needle)
    assert main(["extract", "--images", "x.png", "--out", str(tmp_path / "f.safetensors"), "--device", device]) == 2
    _one_line_error(capsys, needle)


@pytest.mark.parametrize("option, value, needle", [("--batch-size", "0", "batch_size"),
                                                   ("--img-size", "0", "img_size"),
                                                   ("--img-size", "-128", "img_size"),
                                                   ("--ensemble", "0", "ensemble"),
                                                   ("--shard-size", "0", "shard_size")])
def test_bad_numbers(synthetic_roots, tmp_path, capsys, no_model, option, value, needle):
    args = _evaluate(synthetic_roots["spair"], tmp_path / "a")
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert main(args) == 2
    _one_line_error(capsys, needle, value)
    if option in ("--batch-size", "--img-size"):
        targs = _train(synthetic_roots["spair"], tmp_path / "b")
        targs[targs.index(option) + 1] = value
        assert main(targs) == 2
        _one_line_error(capsys, needle, value)
        assert main(["extract", "--images", "x.png", "--out", str(tmp_path / "f.safetensors"), option, value]) == 2
        _one_line_error(capsys, value)


def test_img_size_native_is_the_default_word():
    p = build_parser()
    for cmd in (["evaluate", "--dataset", "spair", "--data-root", ".", "--out", "o"],
                ["train", "--prompt-type", "single", "--dataset", "spair", "--data-root", ".", "--max-steps", "1",
                 "--out", "o"],
                ["extract", "--images", "a.png", "--out", "o"]):
        assert p.parse_args(cmd).img_size is None
        assert p.parse_args(cmd + ["--img-size", "native"]).img_size is None
        assert p.parse_args(cmd + ["--img-size", "256"]).img_size == 256


def test_out_that_cannot_be_written(synthetic_roots, tmp_path, capsys, no_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(_evaluate(synthetic_roots["spair"], blocker / "run")) == 2
    _one_line_error(capsys, str(blocker / "run"), "is a file")
    assert main(_evaluate(synthetic_roots["spair"], blocker)) == 2
    _one_line_error(capsys, str(blocker), "not a folder")
    assert main(_train(synthetic_roots["spair"], blocker / "run")) == 2
    _one_line_error(capsys, str(blocker / "run"))
    assert main(["extract", "--images", "x.png", "--out", str(blocker / "f.safetensors")]) == 2
    _one_line_error(capsys, str(blocker))
    assert blocker.read_text() == "not a folder"


def test_out_in_a_read_only_folder(synthetic_roots, tmp_path, capsys, no_model, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: make creating a file there fail as it would
        import sd4match_utils.checks as checks

        real = checks.tempfile.mkstemp

        def mkstemp(*a, dir=None, **k):
            if Path(dir) == ro:
                raise PermissionError(13, "Permission denied")
            return real(*a, dir=dir, **k)

        monkeypatch.setattr(checks.tempfile, "mkstemp", mkstemp)
    try:
        assert main(_evaluate(synthetic_roots["spair"], ro / "run")) == 2
        _one_line_error(capsys, str(ro / "run"), "cannot write", "Permission denied")
        assert main(_train(synthetic_roots["spair"], ro / "run")) == 2
        _one_line_error(capsys, str(ro / "run"), "cannot write")
        assert not (ro / "run").exists()
    finally:
        ro.chmod(0o755)


def _prompt_file(path: Path, tensors: dict, meta: dict) -> Path:
    save_file(tensors, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    return path


@pytest.mark.parametrize("case", ["wrong_key", "bad_categories", "unknown_kind", "not_safetensors", "cpm_missing"])
def test_bad_prompt_file(synthetic_roots, tmp_path, capsys, no_model, case):
    base = {"format": "sd4match-prompt", "format_version": "1", "kind": "single", "text_dim": 64, "categories": None}
    emb = torch.zeros(1, 75, 64)
    path = tmp_path / f"{case}.safetensors"
    if case == "wrong_key":
        _prompt_file(path, {"embedding": emb}, base)
        needle = "'embeddings'"
    elif case == "bad_categories":
        _prompt_file(path, {"embeddings": torch.zeros(2, 75, 64)}, {**base, "kind": "class", "categories": "[car"})
        needle = "'categories'"
    elif case == "unknown_kind":
        _prompt_file(path, {"embeddings": emb}, {**base, "kind": "fancy"})
        needle = "'fancy'"
    elif case == "not_safetensors":
        path.write_bytes(b"\x00" * 32)
        needle = "not a readable"
    else:
        _prompt_file(path, {"global_embeds": torch.zeros(1, 25, 64)}, {**base, "kind": "cpm"})
        needle = "positional_embedding"
    assert main(_evaluate(synthetic_roots["spair"], tmp_path / "run", "--prompt", str(path))) == 2
    _one_line_error(capsys, str(path), needle)
    assert main(["extract", "--images", "x.png", "--out", str(tmp_path / "f.safetensors"), "--prompt",
                 str(path)]) == 2
    _one_line_error(capsys, str(path), needle)


def test_bad_prompt_file_is_named_by_the_library_too(tiny_sd, tmp_path):
    from sd4match_utils.conditioning import load_prompt

    path = _prompt_file(tmp_path / "p.safetensors", {"embedding": torch.zeros(1, 75, 64)},
                        {"format": "sd4match-prompt", "kind": "single", "text_dim": "64", "categories": "null"})
    with pytest.raises(ValueError, match=str(path)):  # was a bare KeyError('embeddings')
        load_prompt(path, tiny_sd)


# --------------------------------------------------------------------------------------------------- locks


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's run lock (as a running evaluate or train would)."""
    code = textwrap.dedent(f"""
        import time
        from sd4match_utils.cache import locked_folder
        with locked_folder({str(folder)!r}, "evaluate"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_second_run_on_a_locked_folder_fails_at_once(synthetic_roots, tmp_path, capsys, no_model, command):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        args = _evaluate(synthetic_roots["spair"], out) if command == "evaluate" else \
            _train(synthetic_roots["spair"], out)
        t0 = time.perf_counter()
        assert main(args) == 2
        assert time.perf_counter() - t0 < 10
        _one_line_error(capsys, str(out), "in use", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_after_a_run_and_after_a_crash(tiny_sd, synthetic_roots, tmp_path):
    from sd4match_utils.cache import FolderLockedError, locked_folder

    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with locked_folder(out):
            with pytest.raises(FolderLockedError, match="in use"):
                with locked_folder(out):
                    pass
            raise RuntimeError("crash")
    with locked_folder(out):  # free again
        pass
    holder = _hold_lock(out)
    holder.kill()  # a killed holder frees the lock (the operating system drops it)
    holder.wait()
    with locked_folder(out):
        pass


# ------------------------------------------------------------------------------------------- overwrites


def test_train_refuses_to_overwrite_a_run(tiny_sd, synthetic_roots, tmp_path, capsys, monkeypatch):
    import sd4match_utils.models as models

    monkeypatch.setattr(models, "load_sd", lambda *a, **k: tiny_sd)
    out = tmp_path / "run"
    out.mkdir()
    (out / "prompt_best.safetensors").write_bytes(b"the best prompt of an earlier run")
    (out / "log.csv").write_text("kind,step\n")
    assert main(_train(synthetic_roots["spair"], out)) == 2
    _one_line_error(capsys, str(out), "--resume", "--overwrite", "prompt_best.safetensors")
    assert (out / "prompt_best.safetensors").read_bytes() == b"the best prompt of an earlier run"
    assert main(_train(synthetic_roots["spair"], out, "--resume", "--overwrite")) == 2
    _one_line_error(capsys, "--resume", "--overwrite")
    assert main(_train(synthetic_roots["spair"], out, "--overwrite")) == 0
    from sd4match_utils.conditioning import LearnedPrompt

    assert LearnedPrompt.load(out / "prompt_best.safetensors", tiny_sd).kind == "single"
    assert (out / "log.csv").read_text().startswith("kind,step,epoch")
    # a finished run is refused too; --resume continues it
    assert main(_train(synthetic_roots["spair"], out)) == 2
    _one_line_error(capsys, "--resume", "checkpoint.safetensors")
    assert main(_train(synthetic_roots["spair"], out, "--resume")) == 0
