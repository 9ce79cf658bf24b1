"""The quick-start tools without a browser: click → match maths (:mod:`sd4match_utils.matching`), the widgets'
PNGs (:mod:`sd4match_utils.viz`), the explorer and annotator widgets' Python side, and the annotator's file round
trip."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sd4match_utils import viz, widgets
from sd4match_utils.data import load_dataset
from sd4match_utils.explore import click_to_match, explore_click, top_k_peaks
from sd4match_utils.matching import MATCHERS, cosine_maps, match, pixel_to_grid, sample_descriptors


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 9, 11, generator=g), torch.randn(16, 7, 8, generator=g)


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("matcher", MATCHERS)
def test_click_prediction_equals_matching_match(feats, matcher):
    src, trg = feats
    for xy in [(0.0, 0.0), (37.3, 80.9), (127.0, 127.0), (200.0, -5.0)]:  # the last one is clamped to the image
        r = click_to_match(src, trg, xy, 128, matcher=matcher, k=4, prompt="p")
        clamped = torch.tensor([[min(max(v, 0.0), 127.0) for v in xy]])
        expected = match(src, trg, clamped, 128, matcher)[0]
        np.testing.assert_allclose(r.pred_xy, expected.double().numpy(), rtol=0, atol=1e-5)
        assert r.prompt == "p" and r.matcher == matcher and r.img_size == 128
        np.testing.assert_allclose(r.src_xy, clamped[0].numpy())


def test_heatmap_and_top_k(feats):
    src, trg = feats
    xy = (50.0, 60.0)
    r = click_to_match(src, trg, xy, 128, "nn", k=5)
    assert r.heatmap.shape == (7, 8)
    desc = sample_descriptors(src, pixel_to_grid(torch.tensor([xy]), 128, (9, 11)))
    np.testing.assert_allclose(r.heatmap, cosine_maps(desc, trg)[0].numpy(), atol=1e-6)
    assert r.topk_xy.shape == (5, 2) and r.topk_score.shape == (5,)
    assert np.all(np.diff(r.topk_score) <= 0)  # best first
    assert r.topk_score[0] == pytest.approx(r.heatmap.max())
    np.testing.assert_allclose(r.topk_xy[0], r.pred_xy, atol=1e-4)  # nn = the best cell
    cells = np.round(r.topk_xy * np.array([7 / 127, 6 / 127])).astype(int)  # back to cells (align corners)
    for i in range(5):
        for j in range(i):
            assert np.abs(cells[i] - cells[j]).max() > 1  # distinct places, not neighbours
        assert r.topk_score[i] == pytest.approx(r.heatmap[cells[i][1], cells[i][0]])
    d = r.as_dict()
    assert len(d["topk"]) == 5 and d["pred_xy"] == pytest.approx(list(r.pred_xy))
    json.dumps(d)


def test_top_k_peaks():
    heat = np.array([[0.1, 0.9, 0.8], [0.2, 0.3, 0.95], [0.5, 0.0, 0.4]])
    cells, scores = top_k_peaks(heat, k=3, min_distance=0)
    assert cells.tolist() == [[2, 1], [1, 0], [2, 0]] and scores.tolist() == [0.95, 0.9, 0.8]
    cells, scores = top_k_peaks(heat, k=3, min_distance=1)  # (2, 1)'s 8 neighbours are skipped
    assert cells.tolist() == [[2, 1], [0, 2], [0, 0]] and scores.tolist() == [0.95, 0.5, 0.1]
    cells, _ = top_k_peaks(torch.tensor(heat), k=20, min_distance=0)
    assert len(cells) == 9
    with pytest.raises(ValueError, match="k must be"):
        top_k_peaks(heat, k=0)
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        top_k_peaks(np.zeros(4))


def test_explore_click_gives_one_result_per_prompt(feats):
    src, trg = feats
    out = explore_click({"a": (src, trg), "b": (trg[:, :7, :8], src[:, :7, :8])}, (3, 4), 64, "softmax", k=2)
    assert list(out) == ["a", "b"] and out["a"].prompt == "a" and out["b"].heatmap.shape == (7, 8)
    with pytest.raises(ValueError, match="unknown matcher"):
        click_to_match(src, trg, (0, 0), 64, "argmax")


def test_fraction_to_pixel_and_nearest_keypoint():
    assert widgets.fraction_to_pixel(0.0, 1.0, 128) == (0.0, 127.0)
    assert widgets.fraction_to_pixel(0.5, 0.25, 128) == (63.5, 31.5)
    assert widgets.fraction_to_pixel(0.5, 0.5, 200, 100) == (99.5, 49.5)
    kps = np.array([[10.0, 10.0], [50.0, 50.0]])
    assert widgets.nearest_keypoint((12, 11), kps, 5) == 0 and widgets.nearest_keypoint((30, 30), kps, 5) is None
    assert widgets.nearest_keypoint((1, 1), None, 5) is None


def test_rendering_sizes(feats):
    src, trg = feats
    img = Image.new("RGB", (300, 200), "grey")
    r = click_to_match(src, trg, (10, 20), 128, k=3)
    assert png_size(viz.render_source_png(img, 128, 96, (10, 20), kps=[[5, 5], [60, 70]])) == (96, 96)
    assert png_size(viz.render_target_png(img, r, 96, gt_xy=(40, 40))) == (96, 96)
    assert png_size(viz.render_points_png(img, {"head": (10, 20), "tip": (290, 190)}, 150, "tip")) == (150, 100)


def test_plot_explorer(feats):
    src, trg = feats
    img = Image.new("RGB", (64, 64), "white")
    res = explore_click({"empty": (src, trg), "text": (src, trg)}, (20, 30), 64, k=3)
    fig = viz.plot_explorer(img, img, res, 64, gt_xy=(5, 5), title="t")
    assert len(fig.axes) == 3
    assert sum(c.get_gid() == "candidate" for ax in fig.axes for c in ax.collections) == 6


def test_pair_features_and_explorer_widget(tiny_sd, synthetic_roots, tmp_path):
    from sd4match_utils.conditioning import LearnedPrompt

    ds = load_dataset("spair", synthetic_roots["spair"], "test", img_size=128)
    sample = ds[0]
    prompt_file = tmp_path / "p.safetensors"
    LearnedPrompt.initialise(tiny_sd, "single", n_tokens=4).save(prompt_file, tiny_sd)
    specs = {"empty": "empty", "text": "text", "learned": str(prompt_file)}
    f = widgets.pair_features(tiny_sd, sample, specs, ensemble=1, img_size=128)
    assert list(f) == ["empty", "text", "learned"]
    c, h, w = f["text"][0].shape
    assert f["learned"][1].shape == (c, h, w) and f["empty"][0].device.type == "cpu"
    assert not torch.equal(f["empty"][0], f["text"][0])  # the prompt changes the features
    mine = SimpleNamespace(src_image=sample.src_image, trg_image=sample.trg_image, category=sample.category)
    own = widgets.pair_features(tiny_sd, mine, {"text": "text"}, ensemble=1, img_size=128)
    torch.testing.assert_close(own["text"][1], f["text"][1])  # two photos of your own work the same way

    e = widgets.MatchExplorer.from_sample(sample, f, k=3, display_size=64)
    assert e.source.state["click"] == pytest.approx(list(sample.src_kps_r[0]), abs=1e-3)
    np.testing.assert_allclose(e.gt_xy, sample.trg_kps_r[0])  # the first click is on a keypoint
    first = e.source.state["pred"]
    assert set(first) == set(specs)

    e.source.click = [0.9, 0.1, 1]  # what the browser sends
    x, y = widgets.fraction_to_pixel(0.9, 0.1, 128)
    assert e.source.state["n"] == 2 and e.source.state["click"] == pytest.approx([x, y], abs=1e-3)
    for label, (s, t) in f.items():
        expected = match(s, t, torch.tensor([[x, y]]), 128, "kernel_softmax")[0].tolist()
        assert e.source.state["pred"][label] == pytest.approx(expected, abs=1e-3)
        assert png_size(e.targets[label].value) == (64, 64)
    assert png_size(base64.b64decode(e.source.png)) == (64, 64)
    assert e.table.value.count('class="sd4m-pred"') == 3 and 'data-prompt="learned"' in e.table.value
    e.matcher_box.value = "nn"
    assert e.source.state["matcher"] == "nn" and e.source.state["n"] == 3
    e.k_box.value = 2
    assert all(len(r.topk_xy) == 2 for r in e.results.values())


# ---------------------------------------------------------------------------------------------- annotator


@pytest.fixture
def photos(tmp_path):
    for name, size in (("a.jpg", (200, 100)), ("sub/b.png", (120, 160)), ("c.png", (80, 80))):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, "teal").save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_annotator_round_trip(photos):
    ann = widgets.Annotator(photos)
    assert ann.images() == ["a.jpg", "c.png", "sub/b.png"] and ann.entries == []
    with pytest.raises(ValueError, match="give its category"):
        ann.add_point("a.jpg", "head", (10, 10))
    ann.add_point("a.jpg", "head", (10, 10), category="screw")
    ann.add_point(photos / "a.jpg", "tip", (190.5, 90))  # absolute paths are stored relative
    ann.add_point("sub/b.png", "head", (5, 6), category="screw")
    ann.add_point("sub/b.png", "head", (7, 8))  # moves it
    ann.add_point("sub/b.png", "tip", (100, 150))
    for bad, match_ in (((300, 10), "outside the 200x100"), (("x", 1), "two finite numbers"), ((1,), r"\(x, y\)")):
        with pytest.raises(ValueError, match=match_):
            ann.add_point("a.jpg", "slot", bad)
    with pytest.raises(ValueError, match="non-empty name"):
        ann.add_point("a.jpg", " ", (1, 1))
    with pytest.raises(FileNotFoundError):
        ann.add_point("missing.png", "head", (1, 1), category="screw")
    ann.set_bbox("a.jpg", [5, 5, 195, 95])
    with pytest.raises(ValueError, match="x2 > x1"):
        ann.set_bbox("a.jpg", [50, 5, 10, 95])
    assert ann.keypoints("sub/b.png") == {"head": (7.0, 8.0), "tip": (100.0, 150.0)}
    assert ann.names("screw") == ["head", "tip"] and ann.category("a.jpg") == "screw"
    assert not (photos / "annotations.json").exists()  # nothing written before save()

    path = ann.save()
    assert path == photos / "annotations.json"
    data = json.loads(path.read_text())
    assert data == [{"image": "a.jpg", "category": "screw", "keypoints": {"head": [10.0, 10.0], "tip": [190.5, 90.0]},
                     "bbox": [5.0, 5.0, 195.0, 95.0]},
                    {"image": "sub/b.png", "category": "screw", "keypoints": {"head": [7.0, 8.0], "tip": [100.0, 150.0]}}]
    # the saved file is a valid custom dataset
    ds = load_dataset("custom", photos, "test", img_size=64)
    assert ds.pair_ids == ["a.jpg>sub/b.png", "sub/b.png>a.jpg"] and ds[0].kp_names == ["head", "tip"]

    again = widgets.Annotator(photos)  # reopening reads the file back
    assert again.entries == ann.entries
    assert again.remove_point("a.jpg", "tip") and not again.remove_point("a.jpg", "tip")
    again.set_bbox("a.jpg", None)
    again.set_category("c.png", "washer")
    again.save()
    reread = widgets.Annotator(photos).entries
    assert reread[0] == {"image": "a.jpg", "category": "screw", "keypoints": {"head": [10.0, 10.0]}}
    assert reread[2] == {"image": "c.png", "category": "washer", "keypoints": {}}


def test_annotator_widget_refuses_a_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"no images \(.*\.jpg.*\) under"):
        widgets.AnnotatorWidget(widgets.Annotator(tmp_path))


def test_annotator_widget_places_points_in_original_pixels(photos):
    ann = widgets.Annotator(photos)
    w = widgets.AnnotatorWidget(ann, names=["head", "tip"], category="screw", display_size=100)
    assert w.image == "a.jpg" and w.name_box.value == "head"
    assert png_size(base64.b64decode(w.canvas.png)) == (100, 50)  # aspect kept
    w.canvas.click = [0.25, 0.5, 1]  # a browser click at 1/4 width, 1/2 height of the 200x100 image
    assert ann.keypoints("a.jpg") == {"head": (49.5, 49.5)} and ann.category("a.jpg") == "screw"
    assert w.name_box.value == "tip"  # moved on to the next planned name
    w.click(150, 20)
    assert w.canvas.state["points"] == {"head": [49.5, 49.5], "tip": [150.0, 20.0]}
    w.name_box.value = "head"
    w.click(60, 60)  # moves head
    w.undo()  # back to where it was
    assert ann.keypoints("a.jpg")["head"] == (49.5, 49.5)
    w.undo()
    assert "tip" not in ann.keypoints("a.jpg")
    w.name_box.value = "slot"
    w.click(10, 10)
    assert "slot" in w.name_box.options
    w.image_box.value = "c.png"
    assert w.canvas.state == {"image": "c.png", "points": {}}
    path = w.save()
    assert json.loads(path.read_text())[0]["keypoints"] == {"head": [49.5, 49.5], "slot": [10.0, 10.0]}
    assert "saved 1 image(s)" in w.status.value
