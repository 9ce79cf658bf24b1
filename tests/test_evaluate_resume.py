"""Full-benchmark safety: each unique image is extracted once; a killed evaluation resumes without redoing
finished pairs and ends with the same results as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from sd4match_utils.data import load_dataset
from sd4match_utils.evaluate import EvalSettings, run_evaluation


def _settings(root, **kw):
    return EvalSettings(**{**dict(dataset="spair", data_root=str(root), split="test", ensemble=1, img_size=128,
                                  matchers=["nn", "kernel_softmax"], limit=10), **kw})


def test_each_unique_image_is_extracted_once(tiny_sd, synthetic_roots, tmp_path):
    m = run_evaluation(_settings(synthetic_roots["spair"]), tmp_path, sd=tiny_sd, progress=False, shard_size=3)
    ds = load_dataset("spair", synthetic_roots["spair"], "test", 128)
    unique = {p for e in ds.entries[:10] for p in (e.src_path, e.trg_path)}
    assert m["run"]["unique_images_extracted"] == len(unique) < 20
    assert len(list((tmp_path / "shards").glob("pairs-*.csv"))) == 4  # 10 pairs in shards of 3


def test_resume_refuses_other_settings(tiny_sd, synthetic_roots, tmp_path):
    run_evaluation(_settings(synthetic_roots["spair"], limit=2), tmp_path, sd=tiny_sd, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        run_evaluation(_settings(synthetic_roots["spair"], limit=2, timestep=100), tmp_path, sd=tiny_sd,
                       progress=False, resume=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_sd, synthetic_roots, tmp_path):
    straight = tmp_path / "straight"
    run_evaluation(_settings(synthetic_roots["spair"], limit=24), straight, sd=tiny_sd, progress=False,
                   shard_size=2)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sd4match_utils.cli", "evaluate", "--dataset", "spair", "--data-root",
           str(synthetic_roots["spair"]), "--split", "test", "--ensemble", "1", "--img-size", "128",
           "--matcher", "nn,kernel_softmax", "--limit", "24", "--shard-size", "2", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("pairs-*.csv"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = list((out / "shards").glob("pairs-*.csv"))
    assert finished, "the run should have saved some shards before it was killed"
    assert not (out / "metrics.json").exists(), "the run was killed before the end"
    for f in finished:  # every shard on disk is complete and readable
        assert len(pd.read_csv(f)) > 0
    assert not list(out.rglob("*.tmp"))
    m = run_evaluation(_settings(synthetic_roots["spair"], limit=24), out, sd=tiny_sd, progress=False,
                       resume=True, shard_size=2)
    assert m["run"]["pairs_from_earlier_runs"] >= 4 and m["run"]["pairs_computed_now"] <= 20
    a = pd.read_csv(straight / "predictions.csv")
    b = pd.read_csv(out / "predictions.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-3)
    ma = json.loads((straight / "metrics.json").read_text())["results"]
    mb = json.loads((out / "metrics.json").read_text())["results"]
    assert [r["pck"] for r in ma] == pytest.approx([r["pck"] for r in mb], abs=1e-6)
