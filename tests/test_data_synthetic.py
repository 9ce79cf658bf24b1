"""The synthetic generator: its three outputs load with the real loaders, are sensible, deterministic and fast."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from sd4match_utils.data import (BENCHMARKS, KEYPOINT_NAMES, PFPASCAL_CLASSES, SPLITS, SYNTHETIC_CATEGORIES,
                                 ensure_synthetic, generate_all, generate_spair, load_dataset)

SMALL = {"categories": ("bottle", "car", "tvmonitor"), "images_per_category": 6,
         "pairs_per_split": {"trn": 6, "val": 3, "test": 3}, "images_per_subclass": 2, "pairs_per_subclass": 2}
ANNOTATION_SUFFIXES = {".json", ".csv", ".txt", ".mat"}
IMAGE_SUFFIXES = {".jpg", ".png"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[dict[str, Path], float]:
    """All three formats at the default sizes, and how long generating them took."""
    root = tmp_path_factory.mktemp("synthetic")
    start = time.perf_counter()
    paths = generate_all(root, seed=0)
    return paths, time.perf_counter() - start


def files_of(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_fast_and_clean(generated):
    paths, seconds = generated
    assert seconds < 15.0
    root = paths["spair"].parent
    assert {p.name for p in root.iterdir()} == {"SPair-71k", "PF-Pascal", "PF-Willow"}  # no temporary leftovers
    assert paths == {"spair": root / "SPair-71k", "pfpascal": root / "PF-Pascal", "pfwillow": root / "PF-Willow"}


def test_categories_and_keypoint_names():
    assert len(SYNTHETIC_CATEGORIES) >= 3
    assert set(SYNTHETIC_CATEGORIES) <= set(PFPASCAL_CLASSES)
    for cat in SYNTHETIC_CATEGORIES:
        names = KEYPOINT_NAMES[cat]
        assert len(names) >= 10 and len(set(names)) == len(names)


@pytest.mark.parametrize("name,split", [(n, s) for n in BENCHMARKS for s in SPLITS[n]])
def test_every_split_loads_and_is_sensible(generated, name, split):
    paths, _ = generated
    ds = load_dataset(name, paths[name], split)
    expected = {"trn": 60, "val": 24, "test": 36}[split] if name != "pfwillow" else 9 * 10
    assert len(ds) == expected
    assert len(ds.categories) >= 3
    assert len(set(ds.pair_ids)) == len(ds)
    sizes = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s.category == ds.category_of(i)
        assert s.n_kps >= 1 and s.src_kps.shape == s.trg_kps.shape
        for img, kps in ((s.src_image, s.src_kps), (s.trg_image, s.trg_kps)):
            assert img.mode == "RGB"
            w, h = img.size
            assert 200 <= w <= 320 and 200 <= h <= 320
            sizes.add((w, h))
            assert np.all((kps >= 0) & (kps <= [w - 1, h - 1]))
        assert np.all((s.trg_kps_r >= 0) & (s.trg_kps_r <= 768))
        assert s.thr > 0 and s.thr_orig > 0
        # two different instances, not the same file
        assert s.src_path != s.trg_path
        assert s.src_image.size != s.trg_image.size or not np.array_equal(np.asarray(s.src_image),
                                                                          np.asarray(s.trg_image))
        if name == "spair":
            assert len(s.kp_names) == s.n_kps and set(s.kp_names) <= set(KEYPOINT_NAMES[s.category])
            assert set(s.flags) == {"viewpoint_variation", "scale_variation", "truncation", "occlusion"}
        if name == "pfwillow":
            assert s.n_kps == 10
    assert len(sizes) > 10  # image sizes vary
    assert any(w != h for w, h in sizes)


def test_pairs_are_different_instances_not_warps(generated):
    """Shapes differ between instances, so no affine map explains a pair's keypoints exactly."""
    paths, _ = generated
    residuals = []
    for name in BENCHMARKS:
        ds = load_dataset(name, paths[name], "test")
        for s in ds:
            if s.n_kps < 4:
                continue
            a = np.hstack([s.src_kps, np.ones((s.n_kps, 1))])
            fit, *_ = np.linalg.lstsq(a, s.trg_kps, rcond=None)
            residuals.append(np.linalg.norm(a @ fit - s.trg_kps, axis=1).max())
    assert len(residuals) > 100
    assert min(residuals) > 0.5 and np.median(residuals) > 3.0


def test_spair_visibility_and_splits(generated):
    paths, _ = generated
    root = paths["spair"]
    trn, test = load_dataset("spair", root, "trn"), load_dataset("spair", root, "test")
    assert not set(trn.image_paths()) & set(test.image_paths())  # test images unseen in training
    assert trn.categories == sorted(SYNTHETIC_CATEGORIES)
    counts = {s.n_kps for split in SPLITS["spair"] for s in load_dataset("spair", root, split)}
    assert len(counts) > 1  # some pairs lose keypoints to truncation / occlusion
    # the pair annotation is the both-visible subset of the per-image annotations
    hidden = 0
    for i, line in enumerate(test.pair_ids[:12]):
        pair = json.loads((root / "PairAnnotation" / "test" / f"{line}.json").read_text())
        cat = pair["category"]
        src = json.loads((root / "ImageAnnotation" / cat / pair["src_imname"].replace(".jpg", ".json")).read_text())
        trg = json.loads((root / "ImageAnnotation" / cat / pair["trg_imname"].replace(".jpg", ".json")).read_text())
        both = [k for k in range(len(KEYPOINT_NAMES[cat])) if src["kps"][str(k)] and trg["kps"][str(k)]]
        hidden += len(KEYPOINT_NAMES[cat]) - len(both)
        assert pair["kps_ids"] == both
        assert pair["src_kps"] == [src["kps"][str(k)] for k in both]
        assert pair["kp_names"] == [KEYPOINT_NAMES[cat][k] for k in both]
        assert test[i].src_name == Path(pair["src_imname"]).stem
    flags = [s.flags for s in load_dataset("spair", root, "trn")]
    for key in ("viewpoint_variation", "scale_variation", "truncation", "occlusion"):
        assert {f[key] for f in flags} == {0, 1}


def test_pfpascal_flip_rows_and_nan_keypoints(generated):
    paths, _ = generated
    root = paths["pfpascal"]
    trn = load_dataset("pfpascal", root, "trn")
    flips = [e.flip for e in trn.entries]
    assert 0 < sum(flips) < len(flips)
    assert "flip" not in (root / "test_pairs.csv").read_text().splitlines()[0]
    mats = sorted((root / "PF-dataset-PASCAL" / "Annotations").rglob("*.mat"))
    assert {m.parent.name for m in mats} == set(SYNTHETIC_CATEGORIES)
    kps = [scipy.io.loadmat(str(m))["kps"] for m in mats]
    assert any(np.isnan(k).any() for k in kps)
    assert all(k.shape == (len(KEYPOINT_NAMES[m.parent.name]), 2) for k, m in zip(kps, mats))
    s = trn[flips.index(True)]
    assert s.flip and s.pair_id.endswith("-flip")


def test_pfwillow_subclasses_and_png_modes(generated):
    paths, _ = generated
    root = paths["pfwillow"]
    ds = load_dataset("pfwillow", root, "test")
    assert {"winebottle(wC)", "car(G)"} <= set(ds.categories)
    modes = {Image.open(p).mode for p in ds.image_paths()}
    assert {"RGB", "RGBA", "L"} <= modes
    assert all(s.src_image.mode == "RGB" for s in ds)
    header = (root / "test_pairs.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["imageA", "imageB"] and len(header) == 42


def test_determinism(tmp_path: Path):
    a = files_of(generate_all(tmp_path / "a", seed=3, **SMALL)["spair"].parent)
    b = files_of(generate_all(tmp_path / "b", seed=3, **SMALL)["spair"].parent)
    c = files_of(generate_all(tmp_path / "c", seed=4, **SMALL)["spair"].parent)
    assert a.keys() == b.keys()
    for rel, path in a.items():
        if path.suffix in ANNOTATION_SUFFIXES:
            assert path.read_bytes() == b[rel].read_bytes(), rel
        else:
            assert path.suffix in IMAGE_SUFFIXES
            assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(b[rel]))), rel
    shared_json = [k for k in a.keys() & c.keys() if k.endswith(".json")]
    assert shared_json and all(a[k].read_bytes() != c[k].read_bytes() for k in shared_json)
    shared_images = [k for k in a.keys() & c.keys() if Path(k).suffix in IMAGE_SUFFIXES]
    assert shared_images and all(
        not np.array_equal(np.asarray(Image.open(a[k])), np.asarray(Image.open(c[k]))) for k in shared_images)
    assert (a["PF-Willow/test_pairs.csv"].read_bytes() != c["PF-Willow/test_pairs.csv"].read_bytes())


def test_ensure_synthetic_is_idempotent(tmp_path: Path):
    paths = ensure_synthetic(tmp_path, seed=1, **SMALL)
    marker = tmp_path / "synthetic.json"
    watched = [marker, paths["spair"] / "Layout" / "large" / "trn.txt", paths["pfpascal"] / "trn_pairs.csv",
               paths["pfwillow"] / "test_pairs.csv"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert json.loads(marker.read_text())["seed"] == 1
    time.sleep(0.02)
    assert ensure_synthetic(tmp_path, seed=1, **SMALL) == paths
    assert [p.stat().st_mtime_ns for p in watched] == before
    # different settings regenerate
    ensure_synthetic(tmp_path, seed=2, **SMALL)
    assert json.loads(marker.read_text())["seed"] == 2
    assert paths["pfwillow"].joinpath("test_pairs.csv").stat().st_mtime_ns != before[3]
    # a missing folder regenerates too
    shutil.rmtree(paths["pfpascal"])
    ensure_synthetic(tmp_path, seed=2, **SMALL)
    assert (paths["pfpascal"] / "test_pairs.csv").is_file()


def test_invalid_settings(tmp_path: Path):
    with pytest.raises(ValueError, match="images per category"):
        generate_spair(tmp_path, images_per_category=4)
    with pytest.raises(TypeError, match="unknown"):
        generate_all(tmp_path, colour="red")
    with pytest.raises(ValueError, match="categories"):
        generate_spair(tmp_path, categories=("giraffe",))
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_synthetic_command_writes_a_test_split_of_n_pairs(tmp_path):
    from sd4match_utils.cli import main

    assert main(["synthetic", "--out", str(tmp_path), "--test-pairs", "50"]) == 0
    assert len((tmp_path / "SPair-71k" / "Layout" / "large" / "test.txt").read_text().splitlines()) == 50
    assert len((tmp_path / "PF-Pascal" / "test_pairs.csv").read_text().splitlines()) == 51  # + header
    willow = len((tmp_path / "PF-Willow" / "test_pairs.csv").read_text().splitlines()) - 1
    assert 50 <= willow < 50 + 9  # rounded up to a whole number per sub-class
    spair = load_dataset("spair", tmp_path / "SPair-71k", "test")
    assert {s for s in spair.categories} == set(SYNTHETIC_CATEGORIES)
    assert main(["synthetic", "--out", str(tmp_path / "x"), "--test-pairs", "0"]) == 2
