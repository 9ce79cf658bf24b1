"""Your own images (dataset ``"custom"``): pairs, thresholds, splits and every annotation mistake, on fixtures
written by hand; plus ``sd4match train / evaluate --dataset custom`` end to end on a tiny folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd4match_utils.data import DATASETS, SPLITS, CustomDataset, DatasetFormatError, load_dataset
from sd4match_utils.data.custom import assign_splits, format_annotations, read_annotations


def make_images(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """Plain images of the given ``(W, H)`` sizes, each a different colour."""
    for i, (rel, size) in enumerate(sizes.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 * i % 256, 90, 200 - 10 * i)).save(path)


def write(root: Path, entries) -> Path:
    path = root / "annotations.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


@pytest.fixture
def screws(tmp_path) -> Path:
    """Three screws (so every split holds all three), a different subset of keypoint names on each."""
    make_images(tmp_path, {"s/a.png": (200, 100), "s/b.png": (100, 200), "s/c.png": (150, 150)})
    write(tmp_path, [
        {"image": "s/a.png", "category": "screw", "keypoints": {"head": [20, 10], "tip": [180, 90], "slot": [30, 12]}},
        {"image": "s/b.png", "category": "screw", "keypoints": {"tip": [50, 170], "head": [40, 30]},
         "bbox": [10, 20, 60, 180]},
        {"image": "s/c.png", "category": "screw", "keypoints": {"tip": [75, 140]}},
    ])
    return tmp_path


def test_custom_is_a_registered_dataset():
    assert "custom" in DATASETS and SPLITS["custom"] == ("trn", "val", "test")
    from sd4match_utils.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--dataset", "custom", "--data-root", "x", "--out", "y"])
    assert args.dataset == "custom"


def test_pairs_keypoints_and_thresholds(screws):
    ds = load_dataset("custom", screws, "test", img_size=100)
    assert isinstance(ds, CustomDataset) and ds.categories == ["screw"]
    # every ordered pair of different images sharing a name, sorted by (source, target)
    assert ds.pair_ids == ["s/a.png>s/b.png", "s/a.png>s/c.png", "s/b.png>s/a.png", "s/b.png>s/c.png",
                           "s/c.png>s/a.png", "s/c.png>s/b.png"]
    by_id = {s.pair_id: s for s in ds}

    ab = by_id["s/a.png>s/b.png"]  # names shared by both, in the source entry's order
    assert ab.kp_names == ["head", "tip"]
    np.testing.assert_array_equal(ab.src_kps, [[20, 10], [180, 90]])
    np.testing.assert_array_equal(ab.trg_kps, [[40, 30], [50, 170]])
    np.testing.assert_allclose(ab.src_kps_r, [[10, 10], [90, 90]])  # 200x100 → 100x100
    np.testing.assert_allclose(ab.trg_kps_r, [[40, 15], [50, 85]])  # 100x200 → 100x100
    # target with a bbox: max side of the resized box (50 wide, 160·0.5 = 80 high)
    assert ab.thr == pytest.approx(80.0) and ab.thr_orig == pytest.approx(160.0)
    np.testing.assert_array_equal(ab.trg_bbox, [10, 20, 60, 180])
    assert ab.src_bbox is None

    ba = by_id["s/b.png>s/a.png"]  # no bbox: the box of all of a's keypoints, [20, 10, 180, 90]
    assert ba.kp_names == ["tip", "head"]
    assert ba.thr_orig == pytest.approx(160.0) and ba.thr == pytest.approx(80.0)  # 160·0.5 wide, 80·1 high

    ac = by_id["s/a.png>s/c.png"]  # c has a single keypoint: degenerate box → the whole image
    assert ac.kp_names == ["tip"] and ac.thr == 100.0 and ac.thr_orig == 150.0
    assert ac.src_image.size == (200, 100) and ac.trg_image.mode == "RGB"
    assert ac.src_name == "a" and ac.trg_path == screws / "s/c.png"

    # the annotation file itself is accepted as the root
    assert load_dataset("custom", screws / "annotations.json", "trn", img_size=100).pair_ids == ds.pair_ids


def _category(root: Path, name: str, n: int, start: int = 0, **extra) -> list[dict]:
    make_images(root, {f"{name}/{i}.png": (64, 48) for i in range(start, start + n)})
    return [{"image": f"{name}/{i}.png", "category": name, "keypoints": {"p": [i, 5], "q": [30, 40]}, **extra}
            for i in range(start, start + n)]


def test_splits_are_by_image_deterministic_and_follow_the_rule(tmp_path):
    entries = _category(tmp_path, "big", 10) + _category(tmp_path, "mid", 4) + _category(tmp_path, "small", 2)
    write(tmp_path, entries)
    images = {s: {str(p.relative_to(tmp_path)) for p in load_dataset("custom", tmp_path, s, 64).image_paths()}
              for s in ("trn", "val", "test")}

    def of(split, cat):
        return {i for i in images[split] if i.startswith(cat + "/")}

    # 10 images: 2 test, 2 val, 6 trn, disjoint
    assert (len(of("test", "big")), len(of("val", "big")), len(of("trn", "big"))) == (2, 2, 6)
    assert not (of("test", "big") & of("trn", "big")) and not (of("val", "big") & of("trn", "big"))
    # 4 images: 2 test, 2 trn, val reuses trn
    assert len(of("test", "mid")) == 2 and of("val", "mid") == of("trn", "mid") and len(of("trn", "mid")) == 2
    assert not (of("test", "mid") & of("trn", "mid"))
    # 2 images: everywhere
    assert of("test", "small") == of("trn", "small") == of("val", "small") == {"small/0.png", "small/1.png"}
    # 2 test images of one category → 2 ordered pairs
    assert sum(p.startswith("big/") for p in load_dataset("custom", tmp_path, "test", 64).pair_ids) == 2

    # the split depends on the seed and the names, not on the order of the entries
    shuffled = entries[:]
    random.Random(3).shuffle(shuffled)
    write(tmp_path, shuffled)
    assert assign_splits(read_annotations(tmp_path)) == assign_splits(read_annotations(tmp_path.joinpath(
        "annotations.json")))
    assert {str(p.relative_to(tmp_path)) for p in load_dataset("custom", tmp_path, "test", 64).image_paths()} == \
        images["test"]
    splits = [assign_splits(read_annotations(tmp_path), seed=s) for s in range(4)]
    assert any(splits[0] != other for other in splits[1:])


def test_explicit_split_keys_are_honoured(tmp_path):
    entries = _category(tmp_path, "x", 3, split="test") + _category(tmp_path, "x", 2, start=3, split="trn")
    entries += _category(tmp_path, "x", 1, start=5, split="val")
    write(tmp_path, entries)
    test = load_dataset("custom", tmp_path, "test", 64)
    assert {p.name for p in test.image_paths()} == {"0.png", "1.png", "2.png"} and len(test) == 6
    assert {p.name for p in load_dataset("custom", tmp_path, "trn", 64).image_paths()} == {"3.png", "4.png"}
    assert len(load_dataset("custom", tmp_path, "val", 64)) == 0  # one image: no pair


def test_pairs_need_a_shared_keypoint_name(tmp_path):
    make_images(tmp_path, {"a.png": (50, 50), "b.png": (50, 50), "c.png": (50, 50)})
    write(tmp_path, [{"image": "a.png", "category": "k", "keypoints": {"x": [1, 1]}},
                     {"image": "b.png", "category": "k", "keypoints": {"y": [2, 2]}},
                     {"image": "c.png", "category": "k", "keypoints": {}}])
    assert len(load_dataset("custom", tmp_path, "test", 64)) == 0


BAD = {
    "missing image": ([{"image": "nope.png"}], "image file not found"),
    "keypoint outside": ([{"keypoints": {"head": [250, 10]}}], "keypoint 'head' at (250, 10) lies outside the 200x100"),
    "non-numeric": ([{"keypoints": {"head": ["12px", 3]}}], "keypoint 'head' has a non-numeric"),
    "null coordinate": ([{"keypoints": {"head": [None, 3]}}], "non-numeric"),
    "boolean coordinate": ([{"keypoints": {"head": [True, 3]}}], "non-numeric"),
    "nan coordinate": ([{"keypoints": {"head": [float("nan"), 3]}}], "non-finite"),
    "three numbers": ([{"keypoints": {"head": [1, 2, 3]}}], "must be [x, y]"),
    "keypoints not an object": ([{"keypoints": [[1, 2]]}], "'keypoints' must be an object"),
    "empty keypoint name": ([{"keypoints": {" ": [1, 2]}}], "empty or non-text name"),
    "unknown key": ([{"kps": {}}], "unknown key(s) ['kps']"),
    "missing category": ([{"category": None}], "missing key(s) ['category']"),
    "empty category": ([{"category": " "}], "'category' must be a non-empty string"),
    "bad bbox": ([{"bbox": [1, 2, 3]}], "'bbox' must be 4 finite numbers"),
    "inverted bbox": ([{"bbox": [50, 20, 10, 60]}], "x2 > x1"),
    "bbox outside": ([{"bbox": [0, 0, 300, 60]}], "'bbox' [0.0, 0.0, 300.0, 60.0] lies outside"),
    "bad split": ([{"split": "train"}], "'split' must be one of"),
    "unreadable image": ([{"image": "broken.png"}], "unreadable image"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_annotations_name_file_entry_and_problem(tmp_path, case):
    make_images(tmp_path, {"a.png": (200, 100), "b.png": (200, 100)})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    changes, problem = BAD[case]
    entries = [{"image": "a.png", "category": "bolt", "keypoints": {"head": [10, 10]}},
               {"image": "b.png", "category": "bolt", "keypoints": {"head": [20, 20]}}]
    entry = {**entries[1], **changes[0]}
    entries[1] = {k: v for k, v in entry.items() if v is not None}
    path = write(tmp_path, entries)
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("custom", tmp_path, "test", 64)
    message = str(err.value)
    assert err.value.path == path and str(path) in message
    assert f"entry 1 ({entries[1]['image']!r})" in message
    assert problem in message, message


def test_duplicate_image_and_lonely_category(tmp_path):
    make_images(tmp_path, {"a.png": (40, 40), "b.png": (40, 40)})
    entry = {"image": "a.png", "category": "c", "keypoints": {}}
    path = write(tmp_path, [entry, {"image": "b.png", "category": "c", "keypoints": {}}, {**entry, "image": "./a.png"}])
    with pytest.raises(DatasetFormatError, match=r"entry 2 \('\./a\.png'\): duplicate image, already listed as entry 0"):
        read_annotations(tmp_path)
    write(tmp_path, [entry, {"image": "b.png", "category": "d", "keypoints": {}}])
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("custom", tmp_path, "trn", 64)
    assert err.value.path == path and "entry 0 ('a.png'): category 'c' has only 1 image" in str(err.value)


@pytest.mark.parametrize("text,problem", [
    ("[{]", "malformed JSON"),
    ('{"image": "a.png"}', "expected a JSON list"),
    ('["a.png"]', "entry 0: expected an object"),
])
def test_bad_annotation_files(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(DatasetFormatError, match=problem) as err:
        load_dataset("custom", tmp_path, "test", 64)
    assert err.value.path == path


def test_missing_file_folder_and_split(tmp_path):
    with pytest.raises(DatasetFormatError, match="annotation file not found"):
        load_dataset("custom", tmp_path, "test")
    with pytest.raises(DatasetFormatError, match="root folder not found"):
        load_dataset("custom", tmp_path / "nowhere", "test")
    make_images(tmp_path, {"a.png": (40, 40), "b.png": (40, 40)})
    write(tmp_path, [{"image": p, "category": "c", "keypoints": {}} for p in ("a.png", "b.png")])
    with pytest.raises(DatasetFormatError, match="unknown split 'train'"):
        load_dataset("custom", tmp_path, "train")


def test_format_annotations_is_one_entry_per_line_and_round_trips(tmp_path):
    entries = [{"image": "a.png", "category": "c", "keypoints": {"é": [1.5, 2]}}, {"image": "b.png", "category": "c",
                                                                                   "keypoints": {}}]
    text = format_annotations(entries)
    assert text.count("\n") == 4 and json.loads(text) == entries and format_annotations([]) == "[]\n"


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_train_and_evaluate_on_a_custom_folder(tmp_path, capsys):
    from sd4match_utils.cli import main
    from sd4match_utils.data import write_example

    write_example(tmp_path / "photos", categories=("bottle",), images_per_category=4, drop=0.0)
    common = ["--dataset", "custom", "--data-root", str(tmp_path / "photos"), "--model", "tiny", "--img-size", "128"]
    assert main(["train", "--prompt-type", "single", *common, "--max-steps", "1", "--batch-size", "1",
                 "--n-tokens", "4", "--val-limit", "2", "--quiet", "--out", str(tmp_path / "run")]) == 0
    prompt = tmp_path / "run" / "prompt_best.safetensors"
    assert prompt.is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["settings"]["dataset"] == "custom"

    assert main(["evaluate", *common, "--split", "test", "--prompt", str(prompt), "--ensemble", "1",
                 "--matcher", "nn,kernel_softmax", "--quiet", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["settings"]["dataset"] == "custom" and metrics["conditioning"]["file"] == str(prompt)
    overall = [r for r in metrics["results"] if r["category"] == "all"]
    assert {r["matcher"] for r in overall} == {"nn", "kernel_softmax"} and all(0 <= r["pck"] <= 100 for r in overall)
    import pandas as pd

    pred = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert set(pred["pair_id"]) == set(load_dataset("custom", tmp_path / "photos", "test", 128).pair_ids)
    assert pred["kp_name"].notna().all()

    # a broken annotation file: exit code 2 and a message naming the file and the entry
    ann = tmp_path / "photos" / "annotations.json"
    entries = json.loads(ann.read_text())
    entries[2]["keypoints"]["cap_top"] = [1e6, 0]
    ann.write_text(json.dumps(entries))
    capsys.readouterr()
    assert main(["evaluate", *common, "--out", str(tmp_path / "eval2")]) == 2
    err = capsys.readouterr().err
    assert str(ann) in err and f"entry 2 ({entries[2]['image']!r})" in err and "outside" in err
