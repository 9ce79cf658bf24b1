"""Notebook 01 (feature extraction per layer): the .py / .ipynb pair agrees, and a small papermill run works.

The papermill run uses a ``python3`` kernel spec written into a temporary ``JUPYTER_PATH`` that points at this
interpreter, so it works on a fresh CI machine and is not fooled by a stray user-level ``python3`` kernel that
runs another Python.
"""

import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
STEM = "01_feature_extraction_per_layer"
IPYNB = NOTEBOOKS / f"{STEM}.ipynb"
PY = NOTEBOOKS / f"{STEM}.py"


def _code_and_markdown(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_ipynb_matches_its_percent_script_and_is_clean():
    jupytext = pytest.importorskip("jupytext")
    nb = nbformat.read(IPYNB, as_version=4)
    script = jupytext.read(PY)
    assert _code_and_markdown(nb) == _code_and_markdown(script), (
        f"{IPYNB.name} is out of date: regenerate it with "
        f"`jupytext --to ipynb --set-kernel python3 notebooks/{PY.name}`")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and nb.cells.index(params[0]) == 1
    lines = [ln for ln in params[0].source.splitlines() if ln.strip()]
    assert all(" = " in ln and "  # " in ln for ln in lines), "one typed literal with a comment per line"
    names = {ln.split(" = ")[0] for ln in lines}
    assert {"model", "dataset", "data_root", "split", "n_pairs", "layers", "timesteps", "prompts", "ensemble",
            "img_size", "precision", "device", "seed", "out_dir"} <= names


@pytest.mark.slow
def test_notebook_01_runs_with_papermill(tmp_path, run_notebook):
    from sd4match_utils.data import ensure_synthetic

    roots = ensure_synthetic(tmp_path / "synthetic")
    out_dir = tmp_path / "figures"
    params = dict(data_root=str(roots["spair"]), out_dir=str(out_dir), n_pairs=2, layers=[0, 1, 2, 3],
                  timesteps=[50, 261], prompts=["empty", "text"], ensemble=1, img_size=256, n_pca_images=2)
    run_notebook(IPYNB, tmp_path / "executed.ipynb", params)

    metrics_path = out_dir / "01_metrics_mini_spair.json"
    assert metrics_path.is_file()
    metrics = json.loads(metrics_path.read_text())
    records = metrics["sweep"]
    combos = {(r["layer"], r["timestep"], r["prompt"]) for r in records}
    assert combos == {(l, t, p) for l in params["layers"] for t in params["timesteps"] for p in params["prompts"]}
    assert {r["matcher"] for r in records} == {"kernel_softmax", "nn"}
    assert {r["averaging"] for r in records} == {"per_image", "per_point"}
    assert all(0.0 <= r["pck"] <= 100.0 for r in records)
    assert all(r["alpha"] == pytest.approx(0.1) and r["n_pairs"] == 2 for r in records)
    assert {k: metrics["settings"][k] for k in params} == params
    assert metrics["settings"]["img_size_used"] == 256
    assert metrics["model"]["model"] == "mini" and metrics["model"]["fingerprint"]
    assert metrics["dataset"]["name"] == "spair" and metrics["dataset"]["split"] == "test"
    assert metrics["dataset"]["synthetic"] is False  # a data_root was given, so the names carry no suffix
    assert "torch" in metrics["provenance"]
    for name in ("01_pca_mini_spair.png", "01_similarity_mini_spair.png", "01_matches_mini_spair.png",
                 "01_pck_layer_timestep_mini_spair.png"):
        data = (out_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in metrics["figures"].values()
    assert not list(out_dir.glob(".*tmp"))  # atomic writes left nothing behind

    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "0%|" not in text  # no frozen progress bars in headless runs
