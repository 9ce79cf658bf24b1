"""End to end: ``sd4match evaluate`` on all three formats, metrics recomputed from predictions.csv; extract."""

import json

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

from sd4match_utils.cli import main
from sd4match_utils.matching import MATCHERS

REQUIRED = ["pair_id", "category", "kp_index", "src_x", "src_y", "gt_x", "gt_y", "thr", "pred_x", "pred_y", "matcher",
            "gt_x_orig", "gt_y_orig", "pred_x_orig", "pred_y_orig", "thr_orig"]


def _recompute(df: pd.DataFrame, alpha: float, space: str, img_size: int) -> dict:
    """PCK from the predictions table, written independently of sd4match_utils.metrics."""
    out = {}
    for m, d in df.groupby("matcher"):
        if space == "resized":
            gx = d.gt_x.clip(1e-4, img_size - 1 - 1e-4)
            gy = d.gt_y.clip(1e-4, img_size - 1 - 1e-4)
            dist = np.hypot(d.pred_x - gx, d.pred_y - gy)
            ok = dist <= alpha * d.thr
        else:
            ok = np.hypot(d.pred_x_orig - d.gt_x_orig, d.pred_y_orig - d.gt_y_orig) <= alpha * d.thr_orig
        ok = ok.astype(float)
        per_image = ok.groupby(d.pair_id).mean().mean() * 100
        out[(m, "per_point")] = ok.mean() * 100
        out[(m, "per_image")] = per_image
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["spair", "pfpascal", "pfwillow"])
def test_evaluate_metrics_equal_recomputed_pck(dataset, synthetic_roots, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["evaluate", "--dataset", dataset, "--data-root", str(synthetic_roots[dataset]), "--split", "test",
               "--model", "tiny", "--prompt", "text", "--layer", "1", "--timestep", "50", "--ensemble", "1",
               "--matcher", "all", "--limit", "4", "--seed", "0", "--out", str(out), "--quiet"])
    assert rc == 0
    df = pd.read_csv(out / "predictions.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(REQUIRED) <= set(df.columns)
    assert set(df.matcher) == set(MATCHERS)
    assert df.pair_id.nunique() == 4
    img_size = metrics["settings"]["img_size"]
    assert img_size == 384
    # original-space predictions are the resized ones scaled back
    assert metrics["model"]["model"] == "tiny" and metrics["model"]["fingerprint"]
    assert {"settings", "model", "dataset", "provenance", "results", "features"} <= metrics.keys()
    for space in ("resized", "original"):
        for alpha in (0.05, 0.1, 0.15):
            expected = _recompute(df, alpha, space, img_size)
            for (m, avg), value in expected.items():
                rec = [r for r in metrics["results"] if r["matcher"] == m and r["averaging"] == avg
                       and r["space"] == space and r["category"] == "all" and np.isclose(r["alpha"], alpha)]
                assert len(rec) == 1
                assert rec[0]["pck"] == pytest.approx(value, abs=1e-9)
                assert 0 <= rec[0]["pck"] <= 100
    per_cat = {r["category"] for r in metrics["results"]}
    assert set(df.category) <= per_cat
    assert "kernel_softmax" in capsys.readouterr().out


@pytest.mark.slow
def test_predictions_original_space_is_consistent(synthetic_roots, tmp_path):
    from sd4match_utils.data import load_dataset

    out = tmp_path / "run"
    assert main(["evaluate", "--dataset", "spair", "--data-root", str(synthetic_roots["spair"]), "--split", "val",
                 "--model", "tiny", "--ensemble", "1", "--matcher", "nn", "--limit", "2", "--prompt", "empty",
                 "--out", str(out),
                 "--quiet"]) == 0
    df = pd.read_csv(out / "predictions.csv")
    ds = load_dataset("spair", synthetic_roots["spair"], "val", img_size=384)
    for i in range(2):
        s = ds[i]
        rows = df[df.pair_id == s.pair_id].sort_values("kp_index")
        w, h = s.trg_image.size
        np.testing.assert_allclose(rows.pred_x_orig, rows.pred_x * w / 384, rtol=1e-9)
        np.testing.assert_allclose(rows.pred_y_orig, rows.pred_y * h / 384, rtol=1e-9)
        np.testing.assert_allclose(rows[["gt_x_orig", "gt_y_orig"]].to_numpy(), s.trg_kps)
        np.testing.assert_allclose(rows[["src_x", "src_y"]].to_numpy(), s.src_kps_r)
        assert (rows.thr == s.thr).all()
        # nn predictions lie on the feature grid (24 cells over 384 px, align corners)
        cells = rows.pred_x.to_numpy() * 23 / 383
        np.testing.assert_allclose(cells, np.round(cells), atol=1e-4)
    assert {"viewpoint_variation", "scale_variation", "truncation", "occlusion"} <= set(df.columns)


def test_evaluate_bad_root_is_a_clear_error(tmp_path, capsys):
    rc = main(["evaluate", "--dataset", "spair", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing" in err and "error" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_evaluate_bad_matcher(synthetic_roots, tmp_path, capsys):
    rc = main(["evaluate", "--dataset", "spair", "--data-root", str(synthetic_roots["spair"]), "--matcher", "magic",
               "--out", str(tmp_path)])
    assert rc == 2 and "magic" in capsys.readouterr().err


def test_extract_writes_every_image_and_layer(synthetic_roots, tmp_path):
    imgs = sorted((synthetic_roots["spair"] / "JPEGImages").rglob("*.jpg"))[:2]
    out = tmp_path / "feats.safetensors"
    assert main(["extract", "--images", *map(str, imgs), "--model", "tiny", "--prompt", "text", "--category", "car",
                 "--layers", "0,1,2,3", "--timestep", "50", "--ensemble", "2", "--latent", "mean", "--seed", "3",
                 "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        shapes = {k: tuple(f.get_tensor(k).shape) for k in keys}
    assert keys == {f"{p.stem}/up{l}" for p in imgs for l in range(4)}
    assert shapes[f"{imgs[0].stem}/up1"] == (128, 24, 24)
    settings = json.loads(meta["settings"])
    assert settings["timestep"] == 50 and settings["ensemble"] == 2 and settings["latent"] == "mean"
    assert settings["seed"] == 3 and settings["layers"] == [0, 1, 2, 3]
    assert meta["prompt_text"] == "a photo of a car"
    assert json.loads(meta["model"])["model"] == "tiny"


def test_extract_rejects_bad_layers(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--images", "a.png", "--layers", "1,5", "--out", str(tmp_path / "x.safetensors")])
    assert "subset of 0,1,2,3" in capsys.readouterr().err


def test_evaluate_and_extract_with_a_learned_prompt(tiny_sd, synthetic_roots, tmp_path, capsys):
    from sd4match_utils.data import load_dataset
    from sd4match_utils.conditioning import LearnedPrompt

    cats = load_dataset("spair", synthetic_roots["spair"], "trn").categories
    path = LearnedPrompt.initialise(tiny_sd, "class", cats, seed=2).save(tmp_path / "class.safetensors", tiny_sd)
    out = tmp_path / "run"
    assert main(["evaluate", "--dataset", "spair", "--data-root", str(synthetic_roots["spair"]), "--prompt", str(path),
                 "--model", "tiny", "--ensemble", "1", "--matcher", "nn", "--limit", "2", "--img-size", "256", "--out", str(out),
                 "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["conditioning"]["prompt"] == "class" and metrics["conditioning"]["file"] == str(path)
    img = next((synthetic_roots["spair"] / "JPEGImages").rglob("*.jpg"))
    feats = tmp_path / "f.safetensors"
    assert main(["extract", "--images", str(img), "--prompt", str(path), "--category", cats[0], "--layers", "1",
                 "--model", "tiny", "--ensemble", "1", "--img-size", "256", "--out", str(feats)]) == 0
    with safe_open(str(feats), "pt") as f:
        assert f.metadata()["prompt_text"] == f"learned:{path}"
        assert tuple(f.get_tensor(f"{img.stem}/up1").shape) == (128, 16, 16)
    # a category the Class prompt does not know, and a prompt for another model: clear errors
    capsys.readouterr()
    assert main(["extract", "--images", str(img), "--prompt", str(path), "--category", "zebra", "--layers", "1",
                 "--model", "tiny", "--ensemble", "1", "--out", str(feats)]) == 2
    assert "zebra" in capsys.readouterr().err
    wide = LearnedPrompt("single", __import__("torch").zeros(1, 75, 1024)).save(tmp_path / "w.safetensors", tiny_sd)
    assert main(["evaluate", "--dataset", "spair", "--data-root", str(synthetic_roots["spair"]), "--prompt", str(wide),
                 "--model", "tiny", "--out", str(tmp_path / "x")]) == 2
    assert "(1, 75, 1024)" in capsys.readouterr().err
