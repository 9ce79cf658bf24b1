"""Training a prompt: only the prompt learns, the loss falls, resuming is exact, 2 processes = 1 process."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sd4match_utils.cli import main
from sd4match_utils.conditioning import LearnedPrompt
from sd4match_utils.train import Trainer, TrainSettings, epoch_order, train

IMG = 256  # small images keep CPU tests fast; the code path is the one used at 768


def _settings(root, **kw):
    base = dict(prompt_type="single", dataset="spair", data_root=str(root), max_steps=4, batch_size=2,
                train_limit=4, val_limit=2, img_size=IMG, save_every=1, seed=0)
    return TrainSettings(**{**base, **kw})


def _losses(out):
    return [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv")) if r["kind"] == "train"]


def test_only_the_prompt_gets_gradients(tiny_sd, synthetic_roots, tmp_path):
    t = Trainer(_settings(synthetic_roots["spair"], prompt_type="class"), tmp_path, sd=tiny_sd, progress=False)
    before = t.prompt.embeddings.detach().clone()
    loss = t.train_step()
    assert loss > 0
    assert not torch.equal(before, t.prompt.embeddings), "the prompt moved"
    for m in (tiny_sd.unet, tiny_sd.vae, tiny_sd.text_encoder):
        assert all(not p.requires_grad and p.grad is None for p in m.parameters())
    assert t.prompt.embeddings.shape == (len(t.train_set.categories), 75, tiny_sd.text_dim)


def test_gradient_checkpointing_is_active_in_the_training_step(tiny_sd, synthetic_roots, tmp_path, monkeypatch):
    """--gradient-checkpointing really checkpoints the UNet's blocks during the step (the frozen UNet is in eval
    mode and diffusers only checkpoints under grad mode with the flag set), gives the same step, and leaves the
    shared model as it was."""
    import torch.utils.checkpoint as tuc

    real = tuc.checkpoint
    calls = {"n": 0, "grad": []}

    def counting(fn, *args, **kwargs):
        calls["n"] += 1
        calls["grad"].append(torch.is_grad_enabled())
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(tuc, "checkpoint", counting)
    root = synthetic_roots["spair"]
    plain = Trainer(_settings(root, prompt_type="class"), tmp_path / "a", sd=tiny_sd, progress=False)
    loss_plain = plain.train_step()
    assert calls["n"] == 0, "no checkpointing unless asked for"
    ckpt = Trainer(_settings(root, prompt_type="class", gradient_checkpointing=True), tmp_path / "b", sd=tiny_sd,
                   progress=False)
    loss_ckpt = ckpt.train_step()
    assert calls["n"] > 0 and all(calls["grad"]), "the UNet's blocks are checkpointed during the step"
    # the same step: recomputing activations changes memory, not the numbers
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    torch.testing.assert_close(ckpt.prompt.embeddings, plain.prompt.embeddings, rtol=1e-5, atol=1e-7)
    # the shared, frozen model is left as it was: no flag set, every module in eval mode
    assert not any(getattr(m, "gradient_checkpointing", False) for m in tiny_sd.unet.modules())
    assert not any(m.training for m in tiny_sd.unet.modules())
    n = calls["n"]
    with torch.no_grad():
        ckpt.run_validation()
    assert calls["n"] == n, "validation (no gradients) does not checkpoint"


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(10, 0, 0), epoch_order(10, 0, 1)
    assert sorted(a.tolist()) == list(range(10)) and not torch.equal(a, b)
    assert torch.equal(a, epoch_order(10, 0, 0))


@pytest.mark.slow
def test_loss_falls_when_overfitting_a_few_pairs(tiny_sd, synthetic_roots, tmp_path):
    s = _settings(synthetic_roots["spair"], max_steps=8, train_limit=2, batch_size=2, lr=3e-2, save_every=100)
    t = Trainer(s, tmp_path, sd=tiny_sd, progress=False)
    with torch.no_grad():
        before = t.micro_loss(0).item()  # the objective on step 0's pairs and noise
    summary = t.fit()
    t.step = 0
    with torch.no_grad():
        after = t.micro_loss(0).item()
    assert after < before - 0.3, (before, after, _losses(tmp_path))
    assert len(_losses(tmp_path)) == 8
    for name in ("settings.json", "checkpoint.safetensors", "prompt_best.safetensors", "prompt_last.safetensors",
                 "log.csv", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert summary["val_pck_before"] is not None and 0 <= summary["best_val_pck"] <= 100
    assert LearnedPrompt.load(tmp_path / "prompt_best.safetensors", tiny_sd).kind == "single"


@pytest.mark.slow
def test_resume_after_interruption_is_exact(tiny_sd, synthetic_roots, tmp_path, monkeypatch):
    s = _settings(synthetic_roots["spair"], max_steps=5, train_limit=6, batch_size=2)
    train(s, tmp_path / "straight", sd=tiny_sd, progress=False)
    # interrupted after 3 steps (crash inside step 4), then resumed
    real_step = Trainer.train_step
    calls = {"n": 0}

    def crashing(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(s, tmp_path / "resumed", sd=tiny_sd, progress=False)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    ckpt = json.loads(__import__("safetensors").safe_open(str(tmp_path / "resumed" / "checkpoint.safetensors"),
                                                          "pt").metadata()["progress"])
    assert ckpt["step"] == 3
    train(s, tmp_path / "resumed", resume=True, sd=tiny_sd, progress=False)
    a = load_file(tmp_path / "straight" / "checkpoint.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert _losses(tmp_path / "straight") == pytest.approx(_losses(tmp_path / "resumed"), rel=1e-5)


def test_log_csv_of_a_resumed_run_equals_an_uninterrupted_one(tiny_sd, synthetic_roots, tmp_path, monkeypatch):
    """log.csv is written once and then appended to; resuming cuts it back to the length the checkpoint recorded
    (rows appended after the checkpoint, a half-written row), so the file ends byte for byte as an uninterrupted
    run's. A checkpoint without that length (older runs) keeps the whole rows up to its step."""
    from types import SimpleNamespace

    import sd4match_utils.train as tr
    from safetensors import safe_open

    monkeypatch.setattr(tr, "time", SimpleNamespace(perf_counter=lambda: 0.0))  # a fixed "seconds" column
    whole_writes = []
    real_write = tr.atomic_write_bytes
    monkeypatch.setattr(tr, "atomic_write_bytes",
                        lambda path, data: whole_writes.append(path) or real_write(path, data))
    # 3 steps per epoch: validation at steps 0, 3 and 5; checkpoints at 2, 3, 4, 5
    s = _settings(synthetic_roots["spair"], max_steps=5, train_limit=6, batch_size=2, val_limit=1, img_size=128,
                  save_every=2)
    train(s, tmp_path / "straight", sd=tiny_sd, progress=False)
    expected = (tmp_path / "straight" / "log.csv").read_bytes()
    assert whole_writes == [tmp_path / "straight" / "log.csv"], "one whole write, then appends"
    assert [r["step"] for r in csv.DictReader(expected.decode().splitlines())] == \
        ["0", "1", "2", "3", "3", "4", "5", "5"]

    # a crash after step 3's rows were appended but before its checkpoint was written, in the middle of a row
    real_save = tr.atomic_save_tensors
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(tr, "atomic_save_tensors", crashing)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(s, out, sd=tiny_sd, progress=False)
    monkeypatch.setattr(tr, "atomic_save_tensors", real_save)
    with open(out / "log.csv", "ab") as f:
        f.write(b"train,4,1.3333,0.61")
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        progress, meta = json.loads(f.metadata()["progress"]), f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert progress["step"] == 2 and progress["log_bytes"] < (out / "log.csv").stat().st_size
    assert b"\r\nval,3," in (out / "log.csv").read_bytes()  # step 3 logged, its checkpoint not written
    train(s, out, resume=True, sd=tiny_sd, progress=False)
    assert (out / "log.csv").read_bytes() == expected

    # the same from a checkpoint that does not record the log's length
    old = tmp_path / "old"
    old.mkdir()
    for name in ("settings.json", "prompt_best.safetensors"):
        (old / name).write_bytes((tmp_path / "straight" / name).read_bytes())
    del progress["log_bytes"]
    tr.atomic_save_tensors(old / "checkpoint.safetensors", tensors, {**meta, "progress": json.dumps(progress)})
    head = expected.split(b"\r\n")
    (old / "log.csv").write_bytes(b"\r\n".join(head[:6]) + b"\r\ntrain,4,1.33")  # rows to step 3, a half row
    train(s, old, resume=True, sd=tiny_sd, progress=False)
    assert (old / "log.csv").read_bytes() == expected


def test_resume_refuses_other_settings(tiny_sd, synthetic_roots, tmp_path):
    train(_settings(synthetic_roots["spair"], max_steps=1), tmp_path, sd=tiny_sd, progress=False)
    with pytest.raises(ValueError, match="settings differ.*lr"):
        train(_settings(synthetic_roots["spair"], max_steps=2, lr=0.5), tmp_path, resume=True, sd=tiny_sd,
              progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tiny_sd, synthetic_roots, tmp_path):
    common = ["train", "--prompt-type", "class", "--dataset", "spair", "--data-root", str(synthetic_roots["spair"]),
              "--max-steps", "2", "--train-limit", "4", "--val-limit", "1", "--img-size", str(IMG), "--quiet"]
    assert main(common + ["--batch-size", "2", "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "sd4match_utils.cli",
           *common, "--batch-size", "1", "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(tmp_path / "one" / "checkpoint.safetensors")
    two = load_file(tmp_path / "two" / "checkpoint.safetensors")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 2
    # Same gradients (Adam's first moment is linear in them) and same prompts. Adam's first step moves every
    # element by about ±lr whatever the size of its gradient, so an element whose first gradient is near zero
    # goes whichever way the last bits of the summation order say, and its second gradient then differs: a
    # handful of elements. A wrong split of the global batch would change nearly all of them.
    m1, m2 = one["adam.0.exp_avg"], two["adam.0.exp_avg"]
    same_grad = torch.isclose(m1, m2, rtol=1e-4, atol=1e-6 * float(m1.abs().max()))
    same_prompt = torch.isclose(one["prompt.embeddings"], two["prompt.embeddings"], rtol=1e-4, atol=1e-5)
    assert same_grad.float().mean() > 0.999 and same_prompt.float().mean() > 0.999
    assert (one["prompt.embeddings"] - two["prompt.embeddings"]).abs().max() < 2 * 2 * 1e-2  # 2 steps of ≤ 2 lr
    # and not trivially: the prompt moved away from its initialisation
    from sd4match_utils.data import load_dataset

    cats = load_dataset("spair", synthetic_roots["spair"], "trn", IMG).categories
    init = LearnedPrompt.initialise(tiny_sd, "class", cats, 75, "random", seed=0).embeddings.detach()
    assert (one["prompt.embeddings"] - init).abs().max() > 1e-3
