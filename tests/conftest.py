"""Test-wide settings: offline Hugging Face hub, throw-away HF and sd4match caches, headless plotting, quiet
progress bars.

The environment variables are set before anything imports ``huggingface_hub`` (it reads them at import time).
"""

import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="sd4match-hf-")
os.environ["SD4MATCH_CACHE"] = tempfile.mkdtemp(prefix="sd4match-cache-")  # weight-hash memo, not ~/.cache
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="session")
def notebook_path():
    """``notebook_path(stem, suffix=".ipynb")``: the path of a committed notebook (or, with ``suffix=".py"``, of its
    jupytext ``py:percent`` script) in ``notebooks/``."""
    return lambda stem, suffix=".ipynb": NOTEBOOKS / f"{stem}{suffix}"


@pytest.fixture(scope="session")
def tiny_sd():
    """The embedded default model (fp32, CPU), built once per test session."""
    from sd4match_utils.models import load_sd

    return load_sd("tiny")


@pytest.fixture(scope="session")
def synthetic_roots(tmp_path_factory):
    """The embedded synthetic dataset in all three formats: ``{"spair", "pfpascal", "pfwillow"}`` → root."""
    from sd4match_utils.data import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0)


@pytest.fixture
def run_notebook(tmp_path, monkeypatch):
    """``run_notebook(ipynb, executed_path, parameters)``: execute a notebook headlessly with papermill (in
    ``notebooks/``, no progress bars, the Agg backend) on a ``python3`` kernel spec for *this* interpreter, written
    into a temporary ``JUPYTER_PATH`` so that a user-wide "python3" kernel of another Python cannot take over."""
    import json
    import sys

    papermill = pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "agg")
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable

    def run(ipynb, executed, parameters: dict) -> None:
        papermill.execute_notebook(str(ipynb), str(executed), parameters=parameters, kernel_name="python3",
                                   cwd=str(ipynb.parent), progress_bar=False, execution_timeout=300)

    return run
