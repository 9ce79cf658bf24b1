"""Repository hygiene: environment.yml mirrors pyproject.toml, notebooks are committed without outputs and
agree with their jupytext pairs, and the README's commands exist."""

import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip_section[-1] == "-e .[dev]", "the environment installs the package itself with its dev extra"
    listed = {_name(r): r.replace(" ", "") for r in pip_section[:-1]}
    assert listed.keys() == wanted.keys()
    for name, spec in wanted.items():
        if name != "torch":
            assert listed[name] == spec, f"environment.yml has {listed[name]!r}, pyproject.toml {spec!r}"
    # torch is pinned to the CPU wheel everywhere it is installed, and the pin satisfies pyproject's range
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"TORCH\s*:=\s*(\S+)", makefile).group(1)
    assert listed["torch"] == pin == "torch==2.13.0"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    minimum = re.search(r">=\s*([\d.]+)", project["requires-python"]).group(1)
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ must hold the committed notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs; strip them before committing"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel name must be python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_parameters_cell_first(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell must be tagged 'parameters'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_jupytext_pair(path):
    import jupytext

    paired = path.with_suffix(".py")
    assert paired.exists(), f"{path.name} needs its jupytext percent-format pair {paired.name}"
    a = nbformat.read(path, as_version=4)
    b = jupytext.read(paired)
    src = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert src(a) == src(b), f"{path.name} and {paired.name} differ: run `jupytext --sync {paired}`"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
    assert {"demo", "test", "setup", "figures", "lab"} <= set(targets)
