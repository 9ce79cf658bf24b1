"""Notebook 00 (quick start): a small headless papermill run works end to end (figures captured in the outputs,
widgets displayed, the summary JSON written, a prompt learned on the example photos).

The static checks of the .ipynb / .py pair and of its parameters cell are in ``test_notebooks.py``.
"""

import json

import nbformat
import pytest


@pytest.mark.slow
def test_notebook_00_runs_with_papermill(tmp_path, run_notebook, notebook_path, synthetic_roots):
    from sd4match_utils.data import write_example

    roots = synthetic_roots
    write_example(tmp_path / "photos", images_per_category=4)
    out_dir = tmp_path / "figures"
    params = dict(data_root=str(roots["spair"]), custom_root=str(tmp_path / "photos"), out_dir=str(out_dir),
                  run_dir=str(tmp_path / "runs"), img_size=128, ensemble=1, custom_img_size=128, train_steps=1,
                  train_batch=1)
    run_notebook(notebook_path("00_quickstart"), tmp_path / "executed.ipynb", params)

    summary = json.loads((out_dir / "00_summary_mini_spair-synthetic.json").read_text())
    assert {k: summary["settings"][k] for k in params} == params
    assert summary["settings"]["img_size_used"] == 128 and summary["model"]["model"] == "mini"
    assert set(summary["click"]) == {"empty", "text"}
    for r in summary["click"].values():
        assert len(r["topk"]) == 5 and all(0 <= v <= 127 for v in r["pred_xy"])
    custom = summary["custom"]
    assert custom["example"] is False and custom["pairs"]["test"] >= 1
    gain = custom["gain"]
    assert gain["steps"] == 1 and gain["gain"] == pytest.approx(gain["pck@0.1 learned"] - gain["pck@0.1 text"])
    assert (tmp_path / "runs" / "train" / "prompt_best.safetensors").is_file()
    for key in ("explorer", "custom_pair", "custom_explorer"):
        name = summary["figures"][key]
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert images >= 3, "the static figures are captured in headless runs"
    assert widgets == 3, "two explorers and the annotation helper"
    text = "".join(o.get("text", "") for o in outputs)
    assert "0%|" not in text  # no frozen progress bars
