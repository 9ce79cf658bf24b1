"""Notebook 03 (conditional prompt training): a tiny papermill run trains CPM, Class and Single, analyses the CPM
gate, compares per category, evaluates on PF-Willow and writes its outputs.

The papermill run uses a ``python3`` kernel spec written into a temporary ``JUPYTER_PATH`` that points at this
interpreter (see ``test_notebook_01.py``). The static checks of the .ipynb / .py pair, of its parameters cell and of
its closing notes are in ``test_notebooks.py``.
"""

import json
from pathlib import Path

import nbformat
import pytest


@pytest.mark.slow
def test_notebook_03_runs_with_papermill(tmp_path, run_notebook, notebook_path, synthetic_roots):

    roots = synthetic_roots
    out_dir, runs_dir = tmp_path / "figures", tmp_path / "runs"
    params = dict(data_root=str(roots["pfpascal"]), willow_root=str(roots["pfwillow"]), img_size=128,
                  train_steps=1, batch_size=2, val_limit=2, test_limit=3, ensemble=1, n_change_pairs=1,
                  out_dir=str(out_dir), runs_dir=str(runs_dir))
    run_notebook(notebook_path("03_conditional_prompt_training"), tmp_path / "executed.ipynb", params)

    metrics = json.loads((out_dir / "03_metrics_mini_pfpascal-synthetic.json").read_text())
    assert {k: metrics["settings"][k] for k in params} == params
    assert metrics["settings"]["dino_used"] == "mini" and metrics["settings"]["img_size_used"] == 128

    # the three prompts trained with one budget, into runs_dir
    training = {r["prompt"]: r for r in metrics["training"]}
    assert set(training) == {"cpm", "class", "single"}
    assert all(r["steps"] == r["total_steps"] == 1 and r["reused"] is False for r in training.values())
    for folder in metrics["settings"]["runs"].values():
        assert Path(folder).parent == runs_dir and (Path(folder) / "prompt_best.safetensors").is_file()
    assert Path(metrics["settings"]["runs"]["cpm"]).name.startswith("cpm_")

    # the CPM's gate before / after, and its description
    gate = metrics["cpm"]["gate"]
    assert set(gate) == {"before", "after"} and -1 <= gate["after"]["min"] <= gate["after"]["max"] <= 1
    assert metrics["cpm"]["describe"]["n_global"] == 25 and metrics["cpm"]["describe"]["n_cond"] == 50
    norms = metrics["cpm"]["token_norms"]["after"]
    assert (len(norms["global"]), len(norms["positional"]), len(norms["gate"])) == (25, 50, 50)

    # per-category comparison on the test split (3 pairs) with the three prompts
    per_cat = metrics["test"]["per_category_kernel_softmax_pck@0.1_per_image"]
    assert set(per_cat) == {"cpm", "class", "single"} and "all" in per_cat["cpm"]
    assert all(0 <= v <= 100 for col in per_cat.values() for v in col.values())
    assert {r["n_pairs"] for r in metrics["test"]["runs"]} == {3}
    assert all(Path(r["folder"]).parent.parent == runs_dir / "eval" for r in metrics["test"]["runs"])

    # cross-dataset: the PF-Pascal prompts on PF-Willow's sub-classes (Class through the category aliases)
    willow = metrics["cross_dataset_pfwillow"]
    assert {r["prompt"] for r in willow} == {"cpm", "class", "single"}
    assert {r["dataset"] for r in willow} == {"pfwillow"}
    assert any("(" in r["category"] for r in willow)

    # CPM vs Class
    summary = metrics["cpm_vs_class"]["summary"]
    assert summary[0]["category"] == "all" and summary[0]["keypoints"] > 0
    assert summary[0]["net"] == summary[0]["fixed"] - summary[0]["broken"]

    for what in ("training", "cpm_gate", "categories", "willow", "cpm_vs_class"):
        name = f"03_{what}_mini_pfpascal-synthetic.png"
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert metrics["figures"][what] == name
    assert not list(out_dir.glob(".*tmp"))

    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "0%|" not in text
