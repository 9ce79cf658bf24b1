"""Training runs named by their settings: the same settings find their finished run again, an interrupted run is
resumed, and the summaries and logs read back as tables (notebooks 02 and 03 build on this).

Everything runs on the tiny model at 128 px with one training step of one pair and one validation pair."""

from dataclasses import replace

import pytest
import torch

from sd4match_utils import train as tr
from sd4match_utils.report import SUMMARY_COLUMNS, training_curves, training_table
from sd4match_utils.train import TrainSettings

IMG = 128


def _base(root, **kw):
    return TrainSettings(**{**dict(prompt_type="single", dataset="spair", data_root=str(root), max_steps=1,
                                   batch_size=1, val_limit=1, img_size=IMG, save_every=100, seed=0), **kw})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_run_dir_follows_what_changes_the_prompt(synthetic_roots, monkeypatch, tmp_path):
    base = _base(synthetic_roots["spair"])
    folder = tr.run_dir(base, tmp_path, "abc")
    assert folder.parent == tmp_path and folder.name.startswith("single_n75_random_lr0.01_t261_s1_")
    # bookkeeping fields do not rename the run; what changes the prompt, or other weights, does
    assert folder == tr.run_dir(replace(base, save_every=7, dino_cache="/tmp/dino"), tmp_path, "abc")
    assert folder != tr.run_dir(replace(base, device="cuda"), tmp_path, "abc")  # other numerics, another run
    assert folder != tr.run_dir(replace(base, lr=0.1), tmp_path, "abc")
    assert folder != tr.run_dir(base, tmp_path, "other-weights")
    # a field at its default value is the same run whether or not it was given
    assert folder == tr.run_dir(replace(base, n_tokens=75), tmp_path, "abc")
    monkeypatch.chdir(synthetic_roots["spair"].parent)  # the same data through a relative path
    assert folder == tr.run_dir(replace(base, data_root=synthetic_roots["spair"].name), tmp_path, "abc")


def test_train_or_reuse_trains_once_and_resumes_an_interrupted_run(tiny_sd, synthetic_roots, tmp_path, monkeypatch):
    base = _base(synthetic_roots["spair"])
    calls = []
    real = tr.train
    monkeypatch.setattr(tr, "train", lambda s, out, **kw: (calls.append(out), real(s, out, **kw))[1])
    folder, reused = tr.train_or_reuse(base, tmp_path, tiny_sd)
    assert not reused and calls == [folder] and tr.is_finished(folder, base)
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}

    again, reused = tr.train_or_reuse(base, tmp_path, tiny_sd)
    assert again == folder and reused and len(calls) == 1
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "reusing a run rewrites none of its files"
    assert not tr.is_finished(folder, replace(base, lr=0.5))  # another run's settings do not match

    (folder / "summary.json").unlink()  # interrupted after its last checkpoint
    assert not tr.is_finished(folder)
    again, reused = tr.train_or_reuse(base, tmp_path, tiny_sd)
    assert again == folder and not reused and len(calls) == 2
    curves = training_curves({"single": folder})
    assert (curves["kind"] == "train").sum() == 1, "the checkpoint was at the last step: no step is repeated"

    table = training_table({"single": folder}, {"single": True})
    assert list(table.columns) == ["prompt", *SUMMARY_COLUMNS]
    row = table.iloc[0]
    assert row["run"] == folder.name and row["reused"] and row["steps"] == 1
    assert 0 <= row["val_pck_before"] <= 100 and row["first_loss"] > 0
    assert set(curves["kind"]) == {"train", "val"} and curves["loss"].dropna().gt(0).all()
    with pytest.raises(FileNotFoundError, match="summary.json"):
        training_table({"nothing": tmp_path})
