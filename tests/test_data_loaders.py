"""Loaders of the three benchmark formats, on tiny hand-written fixtures (not the synthetic generator).

Expected values are worked out by hand in the comments, independently of the code under test.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from sd4match_utils.data import (DatasetFormatError, PFPascalDataset, PFWillowDataset, SPairDataset, load_dataset,
                                 load_rgb, to_rgb)

S = 768


# ---------------------------------------------------------------------------------------------------------------
# Writing helpers
# ---------------------------------------------------------------------------------------------------------------


def two_tone(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str | None = None) -> None:
    """A left-red / right-blue image (asymmetric, so mirroring is visible) in ``mode``."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 3] = (220, 30, 30)
    arr[:, w // 3:] = (30, 30, 220)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_csv(path: Path, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def raises_naming(filename: str):
    """``pytest.raises`` for a :class:`DatasetFormatError` whose message names ``filename``."""
    return pytest.raises(DatasetFormatError, match=re.escape(filename))


# ---------------------------------------------------------------------------------------------------------------
# SPair-71k
# ---------------------------------------------------------------------------------------------------------------

LINE_A = "000001-2008_000001-2008_000002:cat"
LINE_B = "000002-2008_000003-2008_000001:aeroplane"


def spair_pair(**overrides) -> dict:
    ann = {"src_imname": "2008_000001.jpg", "trg_imname": "2008_000002.jpg", "category": "cat",
           "src_kps": [[50, 20], [10, 90]], "trg_kps": [[150, 75], [0, 0]],
           "src_bndbox": [5, 5, 120, 95], "trg_bndbox": [30, 15, 150, 90],
           "viewpoint_variation": 1, "scale_variation": 0, "truncation": 2, "occlusion": 0}
    ann.update(overrides)
    return ann


@pytest.fixture
def spair_root(tmp_path: Path) -> Path:
    """Two test pairs: cat (200×100 → 300×150) and aeroplane; 'dog' has images but no pairs."""
    root = tmp_path / "SPair-71k"
    two_tone(root / "JPEGImages" / "cat" / "2008_000001.jpg", (200, 100))
    two_tone(root / "JPEGImages" / "cat" / "2008_000002.jpg", (300, 150))
    two_tone(root / "JPEGImages" / "aeroplane" / "2008_000003.jpg", (160, 160))
    two_tone(root / "JPEGImages" / "aeroplane" / "2008_000001.jpg", (120, 240))
    (root / "JPEGImages" / "dog").mkdir(parents=True)
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "test.txt").write_text(f"{LINE_A}\n{LINE_B}\n\n")
    write_json(root / "PairAnnotation" / "test" / f"{LINE_A}.json", spair_pair())
    write_json(root / "PairAnnotation" / "test" / f"{LINE_B}.json",
               spair_pair(category="aeroplane", src_kps=[[1, 2]], trg_kps=[[3, 4]], kp_names=["nose"]))
    return root


def test_spair_index_and_sample(spair_root: Path):
    ds = load_dataset("spair", spair_root, "test")
    assert isinstance(ds, SPairDataset) and ds.name == "spair" and ds.split == "test" and ds.img_size == S
    assert len(ds) == 2
    assert ds.pair_ids == [LINE_A, LINE_B]
    assert ds.categories == ["aeroplane", "cat", "dog"]  # from the layout and the JPEGImages folders
    assert [ds.category_of(0), ds.category_of(1)] == ["cat", "aeroplane"]
    images = spair_root / "JPEGImages"
    assert ds.image_paths() == sorted([images / "cat/2008_000001.jpg", images / "cat/2008_000002.jpg",
                                       images / "aeroplane/2008_000003.jpg", images / "aeroplane/2008_000001.jpg"])

    s = ds[0]
    assert s.pair_id == LINE_A and s.category == "cat" and s.src_name == "2008_000001" and s.trg_name == "2008_000002"
    assert s.src_image.mode == "RGB" and s.src_image.size == (200, 100) and s.trg_image.size == (300, 150)
    np.testing.assert_allclose(s.src_kps, [[50, 20], [10, 90]])
    # x·768/200, y·768/100: (50, 20) → (192, 153.6); (10, 90) → (38.4, 691.2)
    np.testing.assert_allclose(s.src_kps_r, [[192.0, 153.6], [38.4, 691.2]])
    # x·768/300, y·768/150: (150, 75) → (384, 384)
    np.testing.assert_allclose(s.trg_kps_r, [[384.0, 384.0], [0.0, 0.0]])
    np.testing.assert_allclose(s.trg_bbox, [30, 15, 150, 90])
    # target box 120 × 75 px → 307.2 × 384 after resizing: the height wins only after resizing
    assert s.thr == pytest.approx(384.0)
    assert s.thr_orig == pytest.approx(120.0)
    assert s.flags == {"viewpoint_variation": 1, "scale_variation": 0, "truncation": 2, "occlusion": 0}
    assert s.kp_names is None and s.n_kps == 2 and s.flip is False
    assert ds[1].kp_names == ["nose"] and ds[-1].pair_id == LINE_B
    with pytest.raises(IndexError):
        ds[2]


def test_spair_img_size_changes_only_resized_fields(spair_root: Path):
    s = load_dataset("SPair-71k", spair_root, "test", img_size=384)[0]
    np.testing.assert_allclose(s.src_kps_r, [[96.0, 76.8], [19.2, 345.6]])
    assert s.thr == pytest.approx(192.0) and s.thr_orig == pytest.approx(120.0) and s.img_size == 384


def test_spair_more_than_20_keypoints(spair_root: Path):
    kps = [[i * 5.0, i * 2.0] for i in range(27)]  # inside 200×100 and 300×150
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json", spair_pair(src_kps=kps, trg_kps=kps))
    s = load_dataset("spair", spair_root, "test")[0]
    assert s.n_kps == 27 and s.trg_kps_r.shape == (27, 2)
    np.testing.assert_allclose(s.trg_kps_r[26], [130 * 768 / 300, 52 * 768 / 150])


def test_spair_keypoint_tolerance(spair_root: Path):
    # one pixel of slack: x in [-1, W], y in [-1, H]
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json",
               spair_pair(src_kps=[[200, 100], [-1, -1]]))
    assert load_dataset("spair", spair_root, "test")[0].n_kps == 2


@pytest.mark.parametrize("src_kps", [[[201, 20], [1, 1]], [[-1.5, 20], [1, 1]], [[10, 101], [1, 1]]])
def test_spair_keypoint_outside_image(spair_root: Path, src_kps):
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json", spair_pair(src_kps=src_kps))
    with raises_naming(f"{LINE_A}.json") as err:
        load_dataset("spair", spair_root, "test")[0]
    assert "outside" in str(err.value)


def test_spair_missing_root(tmp_path: Path):
    with raises_naming("nowhere"):
        load_dataset("spair", tmp_path / "nowhere", "test")


def test_spair_malformed_layout_line(spair_root: Path):
    (spair_root / "Layout" / "large" / "test.txt").write_text("000001-2008_000001:cat\n")
    with raises_naming("test.txt"):
        load_dataset("spair", spair_root, "test")


def test_spair_malformed_json(spair_root: Path):
    (spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json").write_text('{"src_kps": [[1, 2]')
    ds = load_dataset("spair", spair_root, "test")  # JSON is read per item
    with raises_naming(f"{LINE_A}.json"):
        ds[0]


@pytest.mark.parametrize("key", ["src_kps", "trg_kps", "src_bndbox", "trg_bndbox"])
def test_spair_missing_key(spair_root: Path, key):
    ann = spair_pair()
    del ann[key]
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json", ann)
    with raises_naming(f"{LINE_A}.json") as err:
        load_dataset("spair", spair_root, "test")[0]
    assert key in str(err.value)


def test_spair_missing_annotation(spair_root: Path):
    (spair_root / "PairAnnotation" / "test" / f"{LINE_B}.json").unlink()
    with raises_naming(f"{LINE_B}.json"):
        load_dataset("spair", spair_root, "test")[1]


def test_spair_mismatched_keypoint_counts(spair_root: Path):
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json",
               spair_pair(trg_kps=[[1, 1], [2, 2], [3, 3]]))
    with raises_naming(f"{LINE_A}.json"):
        load_dataset("spair", spair_root, "test")[0]


def test_spair_bad_box(spair_root: Path):
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json", spair_pair(trg_bndbox=[1, 2, 3]))
    with raises_naming(f"{LINE_A}.json"):
        load_dataset("spair", spair_root, "test")[0]


@pytest.mark.parametrize("box", [[30, 15, 30, 15], [150, 90, 30, 15], [30, 15, 150, 15], [150, 15, 30, 90]])
def test_spair_empty_or_inverted_target_box_is_an_error(spair_root: Path, box):
    # zero-size, inverted, zero-height, x-inverted: max(w, h) <= 0 or a box that is no box; today thr <= 0 would
    # silently count every keypoint of the pair as wrong
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json", spair_pair(trg_bndbox=box))
    with raises_naming(f"{LINE_A}.json") as err:
        load_dataset("spair", spair_root, "test")[0]
    assert "trg_bndbox" in str(err.value) and str([float(v) for v in box]) in str(err.value)


def test_spair_pair_without_keypoints_carries_a_skip_reason(spair_root: Path):
    write_json(spair_root / "PairAnnotation" / "test" / f"{LINE_A}.json", spair_pair(src_kps=[], trg_kps=[]))
    ds = load_dataset("spair", spair_root, "test")
    s = ds[0]
    assert s.n_kps == 0 and f"{LINE_A}.json" in s.skip_reason
    assert ds[1].skip_reason is None
    assert ds.split_file == spair_root / "Layout" / "large" / "test.txt"


def test_spair_missing_image(spair_root: Path):
    (spair_root / "JPEGImages" / "cat" / "2008_000002.jpg").unlink()
    with raises_naming("2008_000002.jpg"):
        load_dataset("spair", spair_root, "test")[0]


def test_spair_unreadable_image(spair_root: Path):
    (spair_root / "JPEGImages" / "cat" / "2008_000002.jpg").write_bytes(b"this is not a JPEG")
    with raises_naming("2008_000002.jpg"):
        load_dataset("spair", spair_root, "test")[0]


# ---------------------------------------------------------------------------------------------------------------
# PF-Pascal
# ---------------------------------------------------------------------------------------------------------------

NAN = np.nan
KPS_A = np.array([[10, 20], [NAN, NAN], [30, 40], [50, 10]])  # a.jpg, 120×80
KPS_B = np.array([[15, 25], [35, 45], [NAN, NAN], [60, 30]])  # b.jpg, 100×60


def save_mat(path: Path, **variables) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), variables)


@pytest.fixture
def pascal_root(tmp_path: Path) -> Path:
    """Class 8 (cat): a.jpg 120×80, b.jpg 100×60; keypoints 1 and 2 are each hidden in one image."""
    root = tmp_path / "PF-Pascal"
    data = root / "PF-dataset-PASCAL"
    two_tone(data / "JPEGImages" / "2009_000001.jpg", (120, 80))
    two_tone(data / "JPEGImages" / "2009_000002.jpg", (100, 60))
    save_mat(data / "Annotations" / "cat" / "2009_000001.mat", kps=KPS_A, bbox=np.array([[5, 5, 60, 50]], float))
    save_mat(data / "Annotations" / "cat" / "2009_000002.mat", kps=KPS_B, bbox=np.array([10, 8, 90, 55], float))
    a, b = "PF-dataset-PASCAL/JPEGImages/2009_000001.jpg", "PF-dataset-PASCAL/JPEGImages/2009_000002.jpg"
    write_csv(root / "test_pairs.csv", [["source_image", "target_image", "class"], [a, b, 8], [b, a, 8]])
    write_csv(root / "trn_pairs.csv", [["source_image", "target_image", "class", "flip"], [a, b, 8, 0], [a, b, 8, 1]])
    return root


def test_pfpascal_nan_filtering_and_thresholds(pascal_root: Path):
    ds = load_dataset("pfpascal", pascal_root, "test")
    assert isinstance(ds, PFPascalDataset) and ds.name == "pfpascal" and len(ds) == 2
    assert ds.categories == ["cat"] and ds.category_of(1) == "cat"
    assert ds.pair_ids == ["00000-2009_000001-2009_000002", "00001-2009_000002-2009_000001"]
    assert [p.name for p in ds.image_paths()] == ["2009_000001.jpg", "2009_000002.jpg"]
    s = ds[0]
    # keypoint 0 and 3 are visible in both
    np.testing.assert_allclose(s.src_kps, [[10, 20], [50, 10]])
    np.testing.assert_allclose(s.trg_kps, [[15, 25], [60, 30]])
    # x·768/120, y·768/80 and x·768/100, y·768/60
    np.testing.assert_allclose(s.src_kps_r, [[64.0, 192.0], [320.0, 96.0]])
    np.testing.assert_allclose(s.trg_kps_r, [[115.2, 320.0], [460.8, 384.0]])
    np.testing.assert_allclose(s.src_bbox, [5, 5, 60, 50])  # 1×4 in the file
    assert s.thr == 768.0 and s.thr_orig == 100.0  # max(H, W) of the 100×60 target
    assert s.flip is False and s.kp_names is None
    s1 = ds[1]
    assert s1.thr_orig == 120.0 and s1.n_kps == 2
    assert load_dataset("pfpascal", pascal_root, "test", img_size=384)[0].thr == 384.0


def test_pfpascal_all_nan_pair_carries_a_skip_reason(pascal_root: Path):
    data = pascal_root / "PF-dataset-PASCAL"
    save_mat(data / "Annotations" / "cat" / "2009_000002.mat", kps=np.full((4, 2), NAN), bbox=np.array([10, 8, 90, 55.]))
    s = load_dataset("pfpascal", pascal_root, "test")[0]
    assert s.n_kps == 0 and "2009_000002.mat" in s.skip_reason and "2009_000001.mat" in s.skip_reason


def test_pfpascal_flip(pascal_root: Path):
    ds = load_dataset("pfpascal", pascal_root, "trn")
    plain, flipped = ds[0], ds[1]
    assert ds.pair_ids[1] == "00001-2009_000001-2009_000002-flip"
    assert plain.flip is False and flipped.flip is True
    # pixels mirrored
    np.testing.assert_array_equal(np.asarray(flipped.src_image), np.asarray(plain.src_image)[:, ::-1])
    np.testing.assert_array_equal(np.asarray(flipped.trg_image), np.asarray(plain.trg_image)[:, ::-1])
    assert np.asarray(flipped.src_image)[0, -1, 0] > 150  # the red third is now on the right
    # x' = W − 1 − x with W = 120 (source) and 100 (target)
    np.testing.assert_allclose(flipped.src_kps, [[109, 20], [69, 10]])
    np.testing.assert_allclose(flipped.trg_kps, [[84, 25], [39, 30]])
    np.testing.assert_allclose(flipped.src_kps_r, [[109 * 6.4, 192.0], [69 * 6.4, 96.0]])
    np.testing.assert_allclose(flipped.src_bbox, [59, 5, 114, 50])
    np.testing.assert_allclose(flipped.trg_bbox, [9, 8, 89, 55])


def test_pfpascal_csv_in_data_folder_and_path_prefix(pascal_root: Path):
    (pascal_root / "test_pairs.csv").unlink()
    write_csv(pascal_root / "PF-dataset-PASCAL" / "test_pairs.csv",
              [["source_image", "target_image", "class"], ["JPEGImages/2009_000002.jpg", "2009_000001.jpg", "8"]])
    ds = load_dataset("pf-pascal", pascal_root, "test")
    assert len(ds) == 1 and ds[0].src_name == "2009_000002" and ds[0].flip is False


def test_pfpascal_missing_data_folder(tmp_path: Path):
    (tmp_path / "PF-Pascal").mkdir()
    with raises_naming("PF-dataset-PASCAL"):
        load_dataset("pfpascal", tmp_path / "PF-Pascal", "test")


def test_pfpascal_missing_column(pascal_root: Path):
    write_csv(pascal_root / "test_pairs.csv", [["source_image", "class"], ["2009_000001.jpg", 8]])
    with raises_naming("test_pairs.csv") as err:
        load_dataset("pfpascal", pascal_root, "test")
    assert "target_image" in str(err.value)


def test_pfpascal_wrong_number_of_columns(pascal_root: Path):
    write_csv(pascal_root / "test_pairs.csv",
              [["source_image", "target_image", "class"], ["2009_000001.jpg", "2009_000002.jpg", 8, 0, 0]])
    with raises_naming("test_pairs.csv"):
        load_dataset("pfpascal", pascal_root, "test")


@pytest.mark.parametrize("cls", [0, 21, "cat"])
def test_pfpascal_bad_class(pascal_root: Path, cls):
    write_csv(pascal_root / "test_pairs.csv",
              [["source_image", "target_image", "class"], ["2009_000001.jpg", "2009_000002.jpg", cls]])
    with raises_naming("test_pairs.csv"):
        load_dataset("pfpascal", pascal_root, "test")


def test_pfpascal_missing_mat(pascal_root: Path):
    (pascal_root / "PF-dataset-PASCAL" / "Annotations" / "cat" / "2009_000002.mat").unlink()
    with raises_naming("2009_000002.mat"):
        load_dataset("pfpascal", pascal_root, "test")[0]


def test_pfpascal_malformed_mat(pascal_root: Path):
    (pascal_root / "PF-dataset-PASCAL" / "Annotations" / "cat" / "2009_000001.mat").write_bytes(b"\x00garbage" * 20)
    with raises_naming("2009_000001.mat"):
        load_dataset("pfpascal", pascal_root, "test")[0]


def test_pfpascal_mat_without_kps(pascal_root: Path):
    save_mat(pascal_root / "PF-dataset-PASCAL" / "Annotations" / "cat" / "2009_000001.mat", bbox=np.ones((1, 4)))
    with raises_naming("2009_000001.mat") as err:
        load_dataset("pfpascal", pascal_root, "test")[0]
    assert "kps" in str(err.value)


def test_pfpascal_mismatched_keypoint_counts(pascal_root: Path):
    save_mat(pascal_root / "PF-dataset-PASCAL" / "Annotations" / "cat" / "2009_000002.mat", kps=KPS_B[:3])
    with raises_naming("2009_000002.mat"):
        load_dataset("pfpascal", pascal_root, "test")[0]


def test_pfpascal_keypoint_outside_image(pascal_root: Path):
    save_mat(pascal_root / "PF-dataset-PASCAL" / "Annotations" / "cat" / "2009_000001.mat",
             kps=np.array([[10, 20], [NAN, NAN], [30, 40], [130, 10]]))  # x = 130 > W = 120
    with raises_naming("2009_000001.mat"):
        load_dataset("pfpascal", pascal_root, "test")[0]


def test_pfpascal_missing_and_unreadable_image(pascal_root: Path):
    images = pascal_root / "PF-dataset-PASCAL" / "JPEGImages"
    (images / "2009_000002.jpg").unlink()
    with raises_naming("2009_000002.jpg"):
        load_dataset("pfpascal", pascal_root, "test")[0]
    (images / "2009_000002.jpg").write_bytes(b"GIF89a broken")
    with raises_naming("2009_000002.jpg"):
        load_dataset("pfpascal", pascal_root, "test")[0]


# ---------------------------------------------------------------------------------------------------------------
# PF-Willow
# ---------------------------------------------------------------------------------------------------------------

XA, YA = list(range(10, 101, 10)), list(range(5, 51, 5))  # in A: 200×100
XB, YB = list(range(20, 111, 10)), list(range(10, 101, 10))  # in B: 150×120
HEADER = ["imageA", "imageB"] + [f"c{i}" for i in range(40)]  # coordinate headers are read by position only


@pytest.fixture
def willow_root(tmp_path: Path) -> Path:
    root = tmp_path / "PF-Willow"
    two_tone(root / "PF-dataset" / "car(G)" / "car_001.png", (200, 100), mode="RGBA")
    two_tone(root / "PF-dataset" / "car(G)" / "car_002.png", (150, 120), mode="L")
    two_tone(root / "PF-dataset" / "duck(S)" / "duck_001.png", (200, 100), mode="P")
    two_tone(root / "PF-dataset" / "duck(S)" / "duck_002.png", (150, 120))
    write_csv(root / "test_pairs.csv", [
        HEADER,
        ["PF-dataset/car(G)/car_001.png", "PF-dataset/car(G)/car_002.png"] + XA + YA + XB + YB,
        ["PF-dataset/duck(S)/duck_001.png", "PF-dataset/duck(S)/duck_002.png"] + XA + YA + XB + YB,
    ])
    return root


def test_pfwillow_parsing_and_threshold(willow_root: Path):
    ds = load_dataset("pfwillow", willow_root, "test")
    assert isinstance(ds, PFWillowDataset) and ds.name == "pfwillow" and len(ds) == 2
    assert ds.categories == ["car(G)", "duck(S)"] and ds.category_of(1) == "duck(S)"
    assert ds.pair_ids[0] == "00000-car_001-car_002"
    assert len(ds.image_paths()) == 4
    s = ds[0]
    assert s.src_image.mode == "RGB" and s.trg_image.mode == "RGB"  # from RGBA and L
    assert s.src_image.size == (200, 100) and s.trg_image.size == (150, 120)
    np.testing.assert_allclose(s.src_kps, np.stack([XA, YA], axis=1))
    np.testing.assert_allclose(s.trg_kps, np.stack([XB, YB], axis=1))
    np.testing.assert_allclose(s.trg_kps_r[0], [20 * 768 / 150, 10 * 768 / 120])
    np.testing.assert_allclose(s.trg_bbox, [20, 10, 110, 100])
    np.testing.assert_allclose(s.src_bbox, [10, 5, 100, 50])
    # target keypoint box 90 × 90 px → 460.8 × 576 after resizing
    assert s.thr == pytest.approx(576.0) and s.thr_orig == pytest.approx(90.0)
    assert ds[1].src_image.mode == "RGB"  # from palette


def test_pfwillow_missing_data_folder(tmp_path: Path):
    write_csv(tmp_path / "test_pairs.csv", [HEADER])
    with raises_naming("PF-dataset"):
        load_dataset("pfwillow", tmp_path, "test")


def test_pfwillow_non_numeric(willow_root: Path):
    write_csv(willow_root / "test_pairs.csv",
              [HEADER, ["PF-dataset/car(G)/car_001.png", "PF-dataset/car(G)/car_002.png"] + XA + YA + XB + YB[:-1]
               + ["abc"]])
    with raises_naming("test_pairs.csv") as err:
        load_dataset("pfwillow", willow_root, "test")
    assert "line 2" in str(err.value)


@pytest.mark.parametrize("which", ["header", "row"])
def test_pfwillow_wrong_number_of_columns(willow_root: Path, which):
    row = ["PF-dataset/car(G)/car_001.png", "PF-dataset/car(G)/car_002.png"] + XA + YA + XB + YB
    rows = [HEADER[:-1], row] if which == "header" else [HEADER, row[:-1]]
    write_csv(willow_root / "test_pairs.csv", rows)
    with raises_naming("test_pairs.csv"):
        load_dataset("pfwillow", willow_root, "test")


def test_pfwillow_keypoint_outside_image(willow_root: Path):
    xb = XB[:-1] + [152]  # B is 150 wide
    write_csv(willow_root / "test_pairs.csv",
              [HEADER, ["PF-dataset/car(G)/car_001.png", "PF-dataset/car(G)/car_002.png"] + XA + YA + xb + YB])
    with raises_naming("test_pairs.csv") as err:
        load_dataset("pfwillow", willow_root, "test")[0]
    assert "car_002.png" in str(err.value)


def test_pfwillow_identical_target_keypoints_are_an_error(willow_root: Path):
    # all 10 target keypoints on one point: the threshold box is empty, thr = 0 would make the pair 0 %
    write_csv(willow_root / "test_pairs.csv",
              [HEADER, ["PF-dataset/car(G)/car_001.png", "PF-dataset/car(G)/car_002.png"] + XA + YA + [40] * 10
               + [30] * 10])
    with raises_naming("test_pairs.csv") as err:
        load_dataset("pfwillow", willow_root, "test")
    assert "line 2" in str(err.value) and "[40.0, 30.0, 40.0, 30.0]" in str(err.value)
    # on one line (but not one point) is a valid box: threshold max(w, h) = 90 px
    write_csv(willow_root / "test_pairs.csv",
              [HEADER, ["PF-dataset/car(G)/car_001.png", "PF-dataset/car(G)/car_002.png"] + XA + YA + XB + [30] * 10])
    assert load_dataset("pfwillow", willow_root, "test")[0].thr_orig == pytest.approx(90.0)


def test_pfwillow_missing_and_unreadable_image(willow_root: Path):
    (willow_root / "PF-dataset" / "car(G)" / "car_001.png").unlink()
    with raises_naming("car_001.png"):
        load_dataset("pfwillow", willow_root, "test")[0]
    (willow_root / "PF-dataset" / "car(G)" / "car_001.png").write_bytes(b"\x89PNG truncated")
    with raises_naming("car_001.png"):
        load_dataset("pfwillow", willow_root, "test")[0]


# ---------------------------------------------------------------------------------------------------------------
# Images and the dispatcher
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_load_rgb_converts_every_mode(tmp_path: Path, mode):
    arr = np.zeros((8, 12), dtype=np.uint8)
    arr[:, 6:] = 200
    base = Image.fromarray(arr, mode="L")
    fmt, suffix = ("TIFF", ".tif") if mode == "CMYK" else ("PNG", ".png")
    path = tmp_path / f"img{suffix}"
    if mode == "I;16":
        Image.fromarray(arr.astype(np.uint16) * 257).save(path)  # 16-bit grayscale PNG
    else:
        base.convert(mode).save(path, format=fmt)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (12, 8)
    pix = np.asarray(img).astype(int)
    assert np.abs(pix[0, 0]).max() <= 2 and np.abs(pix[0, -1] - 200).max() <= 2


def test_palette_with_transparency_to_rgb():
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.info["transparency"] = 0
    out = to_rgb(img)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (10, 200, 30)


@pytest.mark.parametrize("name,root,split,missing", [("spair", "spair_root", "val", "val.txt"),
                                                     ("pfpascal", "pascal_root", "val", "val_pairs.csv"),
                                                     ("pfwillow", "willow_root", "trn", "trn_pairs.csv")])
def test_missing_split_names_its_file(request, name, root, split, missing):
    with raises_naming(missing):
        load_dataset(name, request.getfixturevalue(root), split)


def test_load_dataset_unknown_name(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("caltech", tmp_path, "test")
