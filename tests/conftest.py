"""Test-wide settings: offline Hugging Face hub, throw-away HF and sd4match caches, headless plotting, quiet
progress bars.

The environment variables are set before anything imports ``huggingface_hub`` (it reads them at import time).
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="sd4match-hf-")
os.environ["SD4MATCH_CACHE"] = tempfile.mkdtemp(prefix="sd4match-cache-")  # weight-hash memo, not ~/.cache
os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


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
