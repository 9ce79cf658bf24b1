"""Notebook 00 (quick start): the .py / .ipynb pair agrees, and a small headless papermill run works end to end
(figures captured in the outputs, widgets displayed, the summary JSON written, a prompt learned on the example
photos)."""

import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STEM = "00_quickstart"
IPYNB = NOTEBOOKS / f"{STEM}.ipynb"
PY = NOTEBOOKS / f"{STEM}.py"


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_ipynb_matches_its_percent_script_and_is_clean():
    jupytext = pytest.importorskip("jupytext")
    nb = nbformat.read(IPYNB, as_version=4)
    assert _cells(nb) == _cells(jupytext.read(PY)), (
        f"{IPYNB.name} is out of date: regenerate it with `jupytext --to ipynb --set-kernel python3 notebooks/{PY.name}`")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and nb.cells.index(params[0]) == 1
    lines = [ln for ln in params[0].source.splitlines() if ln.strip()]
    assert all(" = " in ln and "  # " in ln and " = " not in ln.split("  # ", 1)[1] for ln in lines), \
        "one literal with a comment per line (no ' = ' in comments: papermill's parser trips on it)"
    names = {ln.split(" = ")[0] for ln in lines}
    assert {"model", "dataset", "data_root", "prompts", "prompt_file", "ensemble", "img_size", "custom_root",
            "train_steps", "out_dir", "run_dir"} <= names


@pytest.mark.slow
def test_notebook_00_runs_with_papermill(tmp_path, run_notebook):
    from sd4match_utils.data import ensure_synthetic, write_example

    roots = ensure_synthetic(tmp_path / "synthetic")
    write_example(tmp_path / "photos", images_per_category=4)
    out_dir = tmp_path / "figures"
    params = dict(data_root=str(roots["spair"]), custom_root=str(tmp_path / "photos"), out_dir=str(out_dir),
                  run_dir=str(tmp_path / "runs"), img_size=128, ensemble=1, custom_img_size=128, train_steps=1,
                  train_batch=1)
    run_notebook(IPYNB, tmp_path / "executed.ipynb", params)

    summary = json.loads((out_dir / "00_summary_mini_spair.json").read_text())
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
