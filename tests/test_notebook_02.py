"""Notebook 02 (prompt tuning and its ablations): a small papermill run works.

The papermill run uses a ``python3`` kernel spec written into a temporary ``JUPYTER_PATH`` that points at this
interpreter (so a stray user-level ``python3`` kernel running another Python cannot be picked up). The static checks
of the .ipynb / .py pair and of its parameters cell are in ``test_notebooks.py``.
"""

import json

import nbformat
import pytest

AXES = {"length", "init", "lr", "train_timestep", "test_timestep"}


@pytest.mark.slow
def test_notebook_02_runs_with_papermill(tmp_path, run_notebook, notebook_path, synthetic_roots):
    out_dir, runs_dir = tmp_path / "figures", tmp_path / "runs"
    params = dict(data_root=str(synthetic_roots["spair"]), out_dir=str(out_dir), runs_dir=str(runs_dir),
                  img_size=128, train_steps=1, batch_size=1, ensemble=1, val_limit=1, test_limit=2,
                  ablate_lengths=[4, 75], ablate_inits=["random", "text"], ablate_lrs=[0.01],
                  ablate_train_timesteps=[261], ablate_test_timesteps=[50, 261], cpu_threads=1)
    run_notebook(notebook_path("02_prompt_tuning_ablations"), tmp_path / "executed.ipynb", params)

    metrics = json.loads((out_dir / "02_metrics_mini_spair-synthetic.json").read_text())
    for key in ("comparison", "training", "training_curves", "ablations", "settings", "runs", "model", "dataset",
                "figures", "provenance"):
        assert metrics[key], key
    assert {k: metrics["settings"][k] for k in params} == params
    assert metrics["settings"]["img_size_used"] == 128 and metrics["model"]["model"] == "mini"

    comparison = metrics["comparison"]
    assert [p for p in dict.fromkeys(r["prompt"] for r in comparison)] == ["empty", "text", "single", "class"]
    assert {(r["matcher"], r["averaging"]) for r in comparison} == {
        (m, a) for m in ("kernel_softmax", "nn") for a in ("per_image", "per_point")}
    assert {r["alpha"] for r in comparison} == {0.05, 0.1, 0.15}
    assert all(0 <= r["pck"] <= 100 for r in comparison)

    training = {r["prompt"]: r for r in metrics["training"]}
    assert set(training) == {"single", "class"}
    assert all(0 <= t["val_pck_before"] <= 100 and 0 <= t["val_pck_last"] <= 100 and t["steps"] == 1
               for t in training.values())
    assert {r["kind"] for r in metrics["training_curves"]} == {"train", "val"}

    ablations = metrics["ablations"]
    assert set(ablations) == AXES
    for axis in AXES:
        assert [v for v in dict.fromkeys(r["value"] for r in ablations[axis])] == params[
            {"length": "ablate_lengths", "init": "ablate_inits", "lr": "ablate_lrs",
             "train_timestep": "ablate_train_timesteps", "test_timestep": "ablate_test_timesteps"}[axis]]
        assert all(0 <= r["pck"] <= 100 for r in ablations[axis])
    # base values reuse the base Single run: 4 distinct prompts (single, class, length 4, init text)
    assert len(metrics["runs"]) == 4
    assert all(r["reused"] for r in ablations["lr"]) and all(r["reused"] for r in ablations["test_timestep"])
    assert {r["run"] for r in ablations["lr"]} == {training["single"]["run"]}

    for name in (f"02_{what}_mini_spair-synthetic.png" for what in ("prompts", "training", "ablations")):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in metrics["figures"].values()
    assert not list(out_dir.glob(".*tmp"))  # atomic writes left nothing behind

    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "0%|" not in text  # no frozen progress bars in headless runs
