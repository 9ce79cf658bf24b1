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
    assert pip_section[0] == "-c constraints.txt", "the environment installs the locked versions"
    listed = {_name(r): r.replace(" ", "") for r in pip_section[1:-1]}
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


def test_installed_versions_match_the_lock():
    """The environment the suite runs in is the locked one (``constraints.txt``, refreshed by ``make lock``), and
    the lock satisfies pyproject's ranges."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[_name(name)] = pinned.strip()
    assert {"diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub", "papermill"} <= set(pins)
    assert "torch" not in pins, "torch is pinned once, in the Makefile (the CPU wheel)"
    for name, pinned in pins.items():
        try:
            assert version(name) == pinned, f"{name} {version(name)} is installed, the lock says {pinned}"
        except PackageNotFoundError:
            pass  # a platform-specific package of the machine the lock was written on
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in map(Requirement, project["dependencies"] + project["optional-dependencies"]["dev"]):
        if req.name != "torch":
            assert pins[_name(req.name)] in req.specifier, f"the lock's {req.name} {pins[_name(req.name)]} is not {req}"


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


# ------------------------------------------------------------------------------------------------- imports

PACKAGE = ROOT / "sd4match_utils"


def _module_imports() -> dict[str, list[tuple[str, list[str], int]]]:
    """``module → [(imported module, imported names, line)]`` for every ``from .x import`` / ``from
    sd4match_utils.x import`` / ``import sd4match_utils.x`` statement of the package, function-level ones included."""
    import ast

    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        here = name.split(".") if is_package else name.split(".")[:-1]  # the package relative imports start from
        found[name] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                found[name].append((target, [a.name for a in node.names], node.lineno))
            elif isinstance(node, ast.Import):
                found[name].extend((a.name, [], node.lineno) for a in node.names)
    return found


def test_no_import_cycles():
    imports = _module_imports()
    modules = set(imports)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, entries in imports.items():
        for target, names, _ in entries:
            # ``from .pkg import sub`` imports the submodule ``pkg.sub``; ``from .mod import name`` the module itself
            for dep in [target, *(f"{target}.{n}" for n in names)]:
                if dep in modules and dep != module:
                    edges[module].add(dep)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(edges[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])


def test_no_private_names_across_modules():
    """No module of the package reaches for another module's private (``_``) names."""
    bad = []
    for module, entries in _module_imports().items():
        for target, names, line in entries:
            if target.startswith("sd4match_utils") and target != module:
                bad += [f"{module}:{line} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, bad
