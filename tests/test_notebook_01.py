"""Notebook 01 (feature extraction per layer): a small papermill run works.

The papermill run uses a ``python3`` kernel spec written into a temporary ``JUPYTER_PATH`` that points at this
interpreter, so it works on a fresh CI machine and is not fooled by a stray user-level ``python3`` kernel that
runs another Python. The static checks of the .ipynb / .py pair and of its parameters cell are in
``test_notebooks.py``.
"""

import json

import nbformat
import pytest


@pytest.mark.slow
def test_notebook_01_runs_with_papermill(tmp_path, run_notebook, notebook_path, synthetic_roots):

    roots = synthetic_roots
    out_dir = tmp_path / "figures"
    params = dict(data_root=str(roots["spair"]), out_dir=str(out_dir), n_pairs=2, layers=[0, 1, 2, 3],
                  timesteps=[50, 261], prompts=["empty", "text"], ensemble=1, img_size=256, n_pca_images=2)
    run_notebook(notebook_path("01_feature_extraction_per_layer"), tmp_path / "executed.ipynb", params)

    metrics_path = out_dir / "01_metrics_mini_spair-synthetic.json"
    assert metrics_path.is_file()
    metrics = json.loads(metrics_path.read_text())
    records = metrics["sweep"]
    combos = {(r["layer"], r["timestep"], r["prompt"]) for r in records}
    assert combos == {(l, t, p) for l in params["layers"] for t in params["timesteps"] for p in params["prompts"]}
    assert {r["matcher"] for r in records} == {"kernel_softmax", "nn"}
    assert {r["averaging"] for r in records} == {"per_image", "per_point"}
    assert all(0.0 <= r["pck"] <= 100.0 for r in records)
    assert all(r["alpha"] == pytest.approx(0.1) for r in records)
    assert all(r["n"] == 2 for r in records if r["averaging"] == "per_image")  # pairs averaged
    assert {k: metrics["settings"][k] for k in params} == params
    assert metrics["settings"]["img_size_used"] == 256
    assert metrics["model"]["model"] == "mini" and metrics["model"]["fingerprint"]
    assert metrics["dataset"]["name"] == "spair" and metrics["dataset"]["split"] == "test"
    assert metrics["dataset"]["synthetic"] is True  # the given root is the generator's folder: the names say so
    assert "torch" in metrics["provenance"]
    for what in ("pca", "similarity", "matches", "pck_layer_timestep"):
        name = f"01_{what}_mini_spair-synthetic.png"
        data = (out_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in metrics["figures"].values()
    assert not list(out_dir.glob(".*tmp"))  # atomic writes left nothing behind

    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "0%|" not in text  # no frozen progress bars in headless runs
