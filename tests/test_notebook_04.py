"""Notebook 04 (benchmark evaluation): a tiny papermill run evaluates fixed and learned prompts on the three
benchmark formats and writes the tidy results, the Markdown tables, the reference comparison, the figures and the
metrics JSON.

The papermill run uses a ``python3`` kernel spec written into a temporary ``JUPYTER_PATH`` that points at this
interpreter (see ``test_notebook_01.py``). The static checks of the .ipynb / .py pair, of its parameters cell (the
paper's protocol as defaults) and of its notes are in ``test_notebooks.py``.
"""

import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest


@pytest.mark.slow
def test_notebook_04_runs_with_papermill(tmp_path, run_notebook, notebook_path, synthetic_roots, tiny_sd):
    from sd4match_utils.conditioning import ConditionalPrompt
    from sd4match_utils.dino import DinoFeatures

    roots = synthetic_roots
    cpm = tmp_path / "trained" / "cpm_demo" / "prompt_best.safetensors"  # a CPM prompt file, as training writes
    ConditionalPrompt.initialise(tiny_sd, DinoFeatures("tiny"), seed=1).save(cpm, tiny_sd)
    out_dir, runs_dir = tmp_path / "figures", tmp_path / "runs"
    params = dict(model="tiny", prompts=["empty", "text", str(cpm)], datasets={d: str(r) for d, r in roots.items()},
                  ensemble=1, limit=2, img_size=128, n_boot=100, n_show=1, out_dir=str(out_dir),
                  runs_dir=str(runs_dir))
    run_notebook(notebook_path("04_benchmark_evaluation"), tmp_path / "executed.ipynb", params)

    tag = "tiny_spair-pfpascal-pfwillow-synthetic"  # the given roots are the generator's folders
    metrics = json.loads((out_dir / f"04_metrics_{tag}.json").read_text())
    assert {k: metrics["settings"][k] for k in params} == params
    assert metrics["settings"]["protocol"]["timestep"] == 50 and metrics["settings"]["protocol"]["ensemble"] == 1

    # every (dataset, prompt) went through run_evaluation into runs_dir/<dataset>/<prompt>/
    runs = pd.DataFrame(metrics["runs"])
    assert len(runs) == 9 and set(runs.status) == {"computed"} and (runs.n_pairs == 2).all()
    for r in runs.itertuples():
        assert Path(r.folder) == runs_dir / r.dataset / r.prompt
        assert (Path(r.folder) / "predictions.csv").is_file() and (Path(r.folder) / "metrics.json").is_file()
    assert set(runs.prompt) == {"empty", "text", "cpm_demo"} and set(runs.kind) == {"empty", "text", "cpm"}

    # the tidy CSV
    results = pd.read_csv(out_dir / f"04_results_{tag}.csv")
    key = ["dataset", "prompt", "matcher", "alpha", "averaging", "space", "category"]
    assert {*key, "pck", "n", "ci_low", "ci_high"} <= set(results.columns)
    assert not results.duplicated(key).any()
    assert set(results.matcher) == {"nn", "bilinear", "softmax", "kernel_softmax", "window_softargmax", "mutual_nn"}
    assert sorted(set(results.alpha)) == [0.05, 0.1, 0.15] and set(results.space) == {"resized", "original"}
    assert set(results.averaging) == {"per_image", "per_point"} and set(results.dataset) == set(roots)
    assert (results.ci_low <= results.pck + 1e-9).all() and (results.pck <= results.ci_high + 1e-9).all()
    assert results.label.str.contains("tiny (random weights), synthetic data — not comparable", regex=False).all()

    # difficulty flags (SPair only), reference comparison, best / worst
    assert {f["flag"] for f in metrics["flags"]} == {"viewpoint_variation", "scale_variation", "truncation",
                                                     "occlusion"}
    assert {f["dataset"] for f in metrics["flags"]} == {"spair"}
    comparison = pd.DataFrame(metrics["reference_comparison"])
    assert set(comparison.method) == {"SD4Match-CPM", "DIFT (SD2-1 zero-shot)"}
    assert set(comparison[comparison.method == "SD4Match-CPM"].prompt) == {"cpm_demo"}
    assert not comparison.comparable.any()
    assert ((comparison.ours - comparison.reference - comparison.difference).abs() < 1e-9).all()
    best = pd.DataFrame(metrics["best_worst"]["pairs"])
    assert metrics["best_worst"]["prompt"] == "cpm_demo"
    assert sorted(best.which.tolist()) == ["best"] * 3 + ["worst"] * 3  # one of each per dataset

    md = re.sub(" +", " ", (out_dir / f"04_results_{tag}.md").read_text())  # table cells are padded: squeeze
    assert md.startswith("# Benchmark evaluation") and "not comparable" in md and "| benchmark | prompt |" in md
    cmp_md = re.sub(" +", " ", (out_dir / f"04_reference_comparison_{tag}.md").read_text())
    assert "| SD4Match-CPM | SPair-71k |" in cmp_md and "SD4Match paper (CVPR 2024)" in cmp_md
    for what in ("overview", "matchers", "categories", "flags", "best_worst"):
        name = f"04_{what}_{tag}.png"
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert metrics["files"][what] == name
    assert not list(out_dir.glob(".*tmp"))

    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "0%|" not in text
