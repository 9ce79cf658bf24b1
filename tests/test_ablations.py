"""Prompt-tuning ablations (notebook 02): run naming, reuse of finished runs, tidy tables, plots.

Everything runs on the tiny model at 128 px with one training step of one pair and one validation / test pair,
so a training costs well under a second.
"""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from sd4match_utils import ablations as ab
from sd4match_utils.train import TrainSettings

IMG = 128  # the smallest multiple of 64 the tiny UNet takes; the code path is the one used at 768
N_ROWS = 2 * 2 * 3  # matchers × averagings × alphas per evaluated prompt


def _base(root, **kw):
    return TrainSettings(**{**dict(prompt_type="single", dataset="spair", data_root=str(root), max_steps=1,
                                   batch_size=1, val_limit=1, img_size=IMG, save_every=100, seed=0), **kw})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for this module: the tiny model at 128 px gains nothing from more, and on a busy shared
    CPU extra threads only spin. The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def protocol():
    return ab.EvalProtocol(ensemble=1, limit=1)


@pytest.fixture(scope="module")
def sweep(tiny_sd, synthetic_roots, protocol, tmp_path_factory):
    """One lr ablation run twice (the second time with training forbidden) plus a test-timestep ablation,
    counting the calls of ``train``."""
    runs = tmp_path_factory.mktemp("runs")
    base = _base(synthetic_roots["spair"])
    evaluator = ab.PromptEvaluator.for_settings(tiny_sd, base, protocol)
    calls = []
    real_train = ab.train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ab, "train", lambda s, out, **kw: (calls.append(s), real_train(s, out, **kw))[1])
        first = ab.run_ablation(base, "lr", [1e-2, 1e-1], runs, tiny_sd, evaluator=evaluator)
        n_first = len(calls)
        mtimes = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
        second = ab.run_ablation(base, "lr", [1e-2, 1e-1], runs, tiny_sd, evaluator=evaluator)
        n_second = len(calls) - n_first
        test_t = ab.run_ablation(base, "test_timestep", [50, 261], runs, tiny_sd, evaluator=evaluator)
        n_test_t = len(calls) - n_first - n_second
        unchanged = all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    return dict(base=base, runs=runs, evaluator=evaluator, first=first, second=second, test_t=test_t,
                n_first=n_first, n_second=n_second, n_test_t=n_test_t, unchanged=unchanged)


# ------------------------------------------------------------------------------------------------ naming


def test_axes_and_invalid_values(tiny_sd, synthetic_roots, tmp_path):
    assert ab.canonical_axis("n_tokens") == "length" and ab.canonical_axis("timestep") == "train_timestep"
    assert set(ab.AXES) == {"length", "init", "lr", "train_timestep", "test_timestep"}
    base = _base(synthetic_roots["spair"])
    for axis, values in (("colour", [1]), ("init", ["bogus"]), ("length", [0]), ("length", [8, 8]), ("lr", []),
                         ("train_timestep", [1000])):
        with pytest.raises(ValueError):
            ab.run_ablation(base, axis, values, tmp_path, tiny_sd)
    assert not any(tmp_path.iterdir()), "nothing is trained before the arguments are checked"


def test_run_key_follows_what_changes_the_prompt(synthetic_roots, monkeypatch, tmp_path):
    base = _base(synthetic_roots["spair"])
    key = ab.run_key(base, "abc")
    assert key == ab.run_key(replace(base, save_every=7, device="cuda"), "abc")  # bookkeeping only
    assert key != ab.run_key(replace(base, lr=0.1), "abc") and key != ab.run_key(base, "other-weights")
    monkeypatch.chdir(synthetic_roots["spair"].parent)  # the same data through a relative path
    assert key == ab.run_key(replace(base, data_root=synthetic_roots["spair"].name), "abc")
    folder = ab.run_dir(base, tmp_path, "abc")
    assert folder.parent == tmp_path and folder.name.startswith("single_n75_random_lr0.01_t261_s1_")
    assert folder.name.endswith(key)


# ----------------------------------------------------------------------------------------------- sweeps


def test_run_ablation_table(sweep):
    first = sweep["first"]
    assert list(first.columns) == list(ab.ABLATION_COLUMNS)
    assert len(first) == 2 * N_ROWS
    assert list(dict.fromkeys(first["value"])) == [0.01, 0.1] and set(first["axis"]) == {"lr"}
    assert first["run"].nunique() == 2 and not first["reused"].any()
    assert set(first["matcher"]) == {"kernel_softmax", "nn"}
    assert set(first["averaging"]) == {"per_image", "per_point"}
    assert np.allclose(sorted(first["alpha"].unique()), [0.05, 0.1, 0.15])
    assert first["pck"].between(0, 100).all() and (first["timestep"] == 50).all()
    assert (first["steps"] == 1).all() and first["val_pck_before"].between(0, 100).all()


def test_second_call_reuses_finished_runs(sweep):
    assert sweep["n_first"] == 2 and sweep["n_second"] == 0 and sweep["n_test_t"] == 0
    assert sweep["unchanged"], "reusing a run rewrites none of its files"
    second = sweep["second"]
    assert second["reused"].all()
    cols = ["value", "run", "matcher", "averaging", "alpha", "pck"]
    assert second[cols].equals(sweep["first"][cols])


def test_test_timestep_axis_evaluates_the_base_prompt(sweep):
    table = sweep["test_t"]
    assert len(table) == 2 * N_ROWS and table["run"].nunique() == 1
    assert table["run"].iloc[0] == sweep["first"]["run"].iloc[0]  # lr = 1e-2 is the base run
    assert list(dict.fromkeys(table["timestep"])) == [50, 261] and table["pck"].between(0, 100).all()
    at_50 = table[table["timestep"] == 50].reset_index(drop=True)
    base_rows = sweep["first"][sweep["first"]["value"] == 0.01].reset_index(drop=True)
    assert np.allclose(at_50["pck"], base_rows["pck"])


def test_interrupted_run_is_resumed_not_restarted(sweep, tiny_sd):
    folder = sweep["runs"] / sweep["first"]["run"].iloc[0]
    (folder / "summary.json").unlink()
    assert not ab.is_finished(folder)
    again, reused = ab.train_or_reuse(sweep["base"], sweep["runs"], tiny_sd)
    assert again == folder and not reused and ab.is_finished(folder, sweep["base"])
    curves = ab.training_curves({"single": folder})
    assert (curves["kind"] == "train").sum() == 1, "the checkpoint was at the last step: no step is repeated"


def test_prompt_comparison_and_training_tables(sweep):
    runs = sweep["runs"]
    single = runs / sweep["first"]["run"].iloc[0]
    other = runs / sweep["first"]["run"].iloc[-1]
    table = ab.evaluate_prompts(sweep["evaluator"], {"empty": "empty", "text": "text", "single": single})
    assert list(table.columns) == list(ab.PCK_COLUMNS) and len(table) == 3 * N_ROWS
    assert list(dict.fromkeys(table["prompt"])) == ["empty", "text", "single"]
    assert table["pck"].between(0, 100).all() and (table["n"] >= 1).all()

    training = ab.training_table({"single": single, "other": other}, {"single": True})
    assert list(training.columns) == ["prompt", *ab.RUN_COLUMNS, "val_gain"]
    assert training["val_pck_before"].between(0, 100).all() and training["val_pck_last"].between(0, 100).all()
    assert training["reused"].tolist() == [True, None]
    curves = ab.training_curves({"single": single, "other": other})
    assert set(curves["kind"]) == {"train", "val"} and curves.groupby("prompt").size().tolist() == [3, 3]
    assert curves.loc[curves["kind"] == "train", "loss"].gt(0).all()


def test_ablation_view(sweep):
    view = ab.ablation_view(sweep["first"])
    assert view.index.tolist() == [0.01, 0.1]
    assert list(view.columns[:4]) == ["reused", "best_step", "val_pck_before", "best_val_pck"]
    assert {f"{m} @{a:g}" for m in ("kernel_softmax", "nn") for a in (0.05, 0.1, 0.15)} == set(view.columns[4:])
    first = sweep["first"]
    pick = first[(first.value == 0.1) & (first.matcher == "nn") & (first.averaging == "per_image")
                 & np.isclose(first.alpha, 0.1)]["pck"].item()
    assert view.loc[0.1, "nn @0.1"] == pick


def test_records_and_plots(sweep, tmp_path):
    recs = ab.records(sweep["first"])
    assert json.loads(json.dumps(recs, allow_nan=False)) == recs
    assert isinstance(recs[0]["pck"], float) and isinstance(recs[0]["steps"], int)
    single = sweep["runs"] / sweep["first"]["run"].iloc[0]
    table = ab.evaluate_prompts(sweep["evaluator"], {"empty": "empty", "single": single})
    figs = {
        "prompts.png": lambda p: ab.plot_prompt_comparison(table, save=p),
        "training.png": lambda p: ab.plot_training(ab.training_curves({"single": single}),
                                                   ab.training_table({"single": single}), save=p),
        "ablations.png": lambda p: ab.plot_ablations({"lr": sweep["first"], "test_timestep": sweep["test_t"]},
                                                     base={"lr": 0.01, "test_timestep": 50}, save=p),
    }
    import matplotlib.pyplot as plt

    for name, draw in figs.items():
        plt.close(draw(tmp_path / name))
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
