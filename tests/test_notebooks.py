"""The notebooks in ``notebooks/``, read statically (the papermill runs are in ``test_notebook_0N.py``).

Every ``.ipynb`` is the jupytext pairing of its ``py:percent`` script, committed with no outputs and a ``python3``
kernel spec; it opens with a Markdown title carrying its number, and its second cell is the one papermill
``parameters`` cell: one typed literal with a comment per line. Beyond these common rules, :data:`EXPECTED` says per
notebook which parameters must exist, the defaults some of them must keep and the phrases its Markdown must hold.
"""

from dataclasses import dataclass, field

import nbformat
import pytest


@dataclass(frozen=True)
class Expected:
    """What one notebook must hold beyond the common rules."""

    names: frozenset = frozenset()  # parameter names that must exist (besides the keys of ``values``)
    values: dict = field(default_factory=dict)  # parameter -> its default in the parameters cell
    notes: tuple = ()  # phrases the Markdown cells must contain


EXPECTED = {
    "00_quickstart": Expected(
        names=frozenset({"model", "dataset", "data_root", "prompts", "prompt_file", "ensemble", "img_size",
                         "custom_root", "train_steps", "out_dir", "run_dir"})),
    "01_feature_extraction_per_layer": Expected(
        names=frozenset({"model", "dataset", "data_root", "split", "n_pairs", "layers", "timesteps", "prompts",
                         "ensemble", "img_size", "precision", "device", "seed", "out_dir"})),
    "02_prompt_tuning_ablations": Expected(
        names=frozenset({"model", "dataset", "data_root", "img_size", "train_steps", "batch_size", "lr",
                         "train_timestep", "test_timestep", "ensemble", "n_tokens", "init", "ablate_lengths",
                         "ablate_inits", "ablate_lrs", "ablate_train_timesteps", "ablate_test_timesteps",
                         "val_limit", "test_limit", "seed", "device", "precision", "cpu_threads", "out_dir",
                         "runs_dir"})),
    "03_conditional_prompt_training": Expected(
        names=frozenset({"model", "dataset", "data_root", "dino", "img_size", "train_steps", "batch_size", "lr",
                         "lr_linear", "n_global", "n_cond", "test_limit", "ensemble", "seed", "out_dir",
                         "runs_dir"}),
        values={"model": "mini", "dataset": "pfpascal", "data_root": "", "dino": "", "lr": 1e-2, "lr_linear": 1e-3,
                "n_global": 25, "n_cond": 50, "out_dir": "../figures", "runs_dir": "../runs/03"},
        notes=("within noise", "0.09 s", "facebook/dinov2-base")),  # the closing notes
    "04_benchmark_evaluation": Expected(
        # the paper's protocol, except the documented CPU-sized ensemble, limit and size of the embedded default;
        # layer / timestep -1: the model's recommended read-out, which is the paper's for SD 2-1
        values={"prompts": ["empty", "text"], "datasets": {"spair": "", "pfpascal": "", "pfwillow": ""},
                "layer": -1, "timestep": -1, "report_matcher": "kernel_softmax", "alphas": [0.05, 0.1, 0.15],
                "matchers": "all", "out_dir": "../figures", "runs_dir": "../runs/04"},
        notes=("ensemble = 2", "paper's 8", "0.057 s", "not comparable")),
}


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_has_its_expectations(notebook_path):
    folder = notebook_path("00_quickstart").parent
    assert sorted(p.stem for p in folder.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_ipynb_matches_its_percent_script_and_is_clean(stem, notebook_path):
    jupytext = pytest.importorskip("jupytext")
    ipynb, py, expected = notebook_path(stem), notebook_path(stem, ".py"), EXPECTED[stem]
    nb = nbformat.read(ipynb, as_version=4)
    assert _cells(nb) == _cells(jupytext.read(py)), (
        f"{ipynb.name} is out of date: regenerate it with "
        f"`jupytext --to ipynb --set-kernel python3 notebooks/{py.name}`")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {stem[:2]}")

    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and nb.cells.index(params[0]) == 1
    lines = [ln for ln in params[0].source.splitlines() if ln.strip()]
    assert all(" = " in ln and "  # " in ln for ln in lines), "one typed literal with a comment per line"
    assert all("=" not in ln.split("  # ", 1)[1] for ln in lines), "papermill's parser trips on '=' in a comment"
    names = {ln.split(" = ")[0] for ln in lines}
    assert expected.names | set(expected.values) <= names
    values = {}
    exec(params[0].source, {}, values)  # noqa: S102 - our own literals
    assert {k: values[k] for k in expected.values} == expected.values

    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert [note for note in expected.notes if note not in text] == []
