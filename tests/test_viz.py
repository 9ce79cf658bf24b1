"""Plotting helpers: PCA colourings, the figure functions on small fake inputs, reproducible saving."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from sd4match_utils import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------------ PCA


def test_pca_rgb_shape_and_range():
    feat = torch.randn(16, 7, 9, generator=torch.Generator().manual_seed(0))
    rgb = viz.pca_rgb(feat)
    assert rgb.shape == (7, 9, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    # full-rank random data: every component spans the whole [0, 1] range
    np.testing.assert_allclose(rgb.reshape(-1, 3).min(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(rgb.reshape(-1, 3).max(axis=0), 1.0, atol=1e-6)


def test_pca_rgb_rank_one_pattern_varies_only_along_it():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=12))  # channel loading
    pattern = torch.tensor(rng.normal(size=(5, 6)))  # spatial pattern
    offset = torch.tensor(rng.normal(size=12))  # a constant per channel (removed by centring)
    feat = a[:, None, None] * pattern[None] + offset[:, None, None]
    rgb = viz.pca_rgb(feat)
    flat_p = pattern.numpy().reshape(-1)
    red = rgb[..., 0].reshape(-1)
    # the first component is an affine, monotonic function of the pattern, spanning [0, 1]
    slope, intercept = np.polyfit(flat_p, red, 1)
    np.testing.assert_allclose(red, slope * flat_p + intercept, atol=1e-5)
    assert abs(slope) > 0 and red.min() == pytest.approx(0.0, abs=1e-6) and red.max() == pytest.approx(1.0)
    # the other two components carry nothing: they are flat
    np.testing.assert_allclose(rgb[..., 1:], 0.5, atol=1e-6)
    # equal pattern values → equal colours
    feat2 = a[:, None, None] * torch.tensor([[1.0, 2.0], [2.0, 1.0]])[None]
    rgb2 = viz.pca_rgb(feat2)
    np.testing.assert_allclose(rgb2[0, 0], rgb2[1, 1], atol=1e-6)
    np.testing.assert_allclose(rgb2[0, 1], rgb2[1, 0], atol=1e-6)
    assert not np.allclose(rgb2[0, 0], rgb2[0, 1])


def test_pca_rgb_joint_shares_one_basis():
    g = torch.Generator().manual_seed(2)
    f1, f2 = torch.randn(8, 4, 5, generator=g), torch.randn(8, 6, 3, generator=g)
    c1, c2 = viz.pca_rgb_joint([f1, f2])
    assert c1.shape == (4, 5, 3) and c2.shape == (6, 3, 3)
    # the same vector gets the same colour in both maps
    f2b = f2.clone()
    f2b[:, 0, 0] = f1[:, 0, 0]
    d1, d2 = viz.pca_rgb_joint([f1, f2b])
    np.testing.assert_allclose(d1[0, 0], d2[0, 0], atol=1e-6)
    # deterministic (sign convention), and a single map equals pca_rgb
    np.testing.assert_array_equal(viz.pca_rgb_joint([f1])[0], viz.pca_rgb(f1))
    np.testing.assert_array_equal(viz.pca_rgb(f1), viz.pca_rgb(f1.clone()))


def test_pca_rgb_few_channels_and_bad_input():
    rgb = viz.pca_rgb(torch.randn(2, 3, 3))
    assert rgb.shape == (3, 3, 3)
    np.testing.assert_allclose(rgb[..., 2], 0.5)
    with pytest.raises(ValueError, match="shape"):
        viz.pca_rgb(torch.randn(3, 3))
    with pytest.raises(ValueError, match="channels"):
        viz.pca_rgb_joint([torch.randn(3, 2, 2), torch.randn(4, 2, 2)])


# ------------------------------------------------------------------------------------------------------ plots


def test_plot_pca_grid_axes():
    images = [_image(seed=i) for i in range(2)]
    feats = {0: torch.randn(2, 8, 3, 3), 1: torch.randn(2, 8, 6, 6), 3: torch.randn(2, 4, 12, 12)}
    fig = viz.plot_pca(images, feats, img_size=64)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * (1 + 3)
    assert fig.axes[1].get_title().startswith("up_blocks[0]")
    assert fig._suptitle is None  # no title asked for, none drawn
    titled = viz.plot_pca(images, feats, title="PCA of three up-blocks")
    assert titled._suptitle.get_text() == "PCA of three up-blocks"  # the caller's title, not a layer's
    with pytest.raises(ValueError, match="features for"):
        viz.plot_pca(images[:1], feats)


def test_plot_similarity_single_and_per_layer():
    src, trg = _image(seed=1), _image(seed=2)
    fig = viz.plot_similarity(src, trg, (10.0, 20.0), torch.rand(4, 4), pred_xy=(5, 5), gt_xy=(6, 7), img_size=64)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    maps = {"up_blocks[0]": torch.rand(3, 3), "up_blocks[1]": np.random.rand(6, 6), "up_blocks[2]": torch.rand(12, 12)}
    preds = {k: torch.tensor([3.0, 4.0]) for k in maps}
    fig = viz.plot_similarity(src, trg, torch.tensor([1.0, 2.0]), maps, pred_xy=preds, img_size=64)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[1:]] == list(maps)
    # the heat-map is upsampled to the displayed image size
    heat = fig.axes[1].get_images()[1].get_array()
    assert heat.shape == (64, 64)


def test_plot_similarity_into_given_axes():
    fig, axes = plt.subplots(1, 3)
    out = viz.plot_similarity(_image(), _image(seed=3), (1, 1), {"a": torch.rand(2, 2), "b": torch.rand(2, 2)},
                              img_size=32, axes=axes)
    assert out is fig and len(fig.axes) == 3
    with pytest.raises(ValueError, match="needs 3 axes"):
        viz.plot_similarity(_image(), _image(), (1, 1), {"a": torch.rand(2, 2), "b": torch.rand(2, 2)},
                            img_size=32, axes=axes[:2])


def _sample(n=5, s=64):
    rng = np.random.default_rng(0)
    return SimpleNamespace(src_image=_image(50, 40, 1), trg_image=_image(30, 60, 2), img_size=s,
                           src_kps_r=rng.uniform(0, s - 1, (n, 2)), trg_kps_r=rng.uniform(0, s - 1, (n, 2)))


def test_plot_matches_lines_coloured_by_correctness():
    sample = _sample()
    pred = torch.as_tensor(sample.trg_kps_r + 1.0)
    correct = np.array([True, False, True, True, False])
    fig = viz.plot_matches(sample, pred, correct)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_gid() == "match"]
    assert len(lines) == 5
    colours = [line.get_color() for line in lines]
    assert colours[0] == colours[2] == colours[3] != colours[1] == colours[4]
    # the image is shown at img_size, source and target side by side
    assert ax.get_images()[0].get_array().shape[:2] == (64, 128)
    # a line ends at the prediction shifted into the right half
    x, y = lines[0].get_data()
    assert x[1] == pytest.approx(float(pred[0, 0]) + 64) and y[1] == pytest.approx(float(pred[0, 1]))
    with pytest.raises(ValueError, match="as many"):
        viz.plot_matches(sample, pred[:3], correct)


def test_plot_matches_into_given_axes():
    fig, ax = plt.subplots()
    sample = _sample(3)
    assert viz.plot_matches(sample, sample.trg_kps_r, np.ones(3, bool), ax=ax, show_gt=False) is fig


def _sweep_table():
    rows = []
    for prompt in ("empty", "text"):
        for matcher in ("kernel_softmax", "nn"):
            for averaging in ("per_image", "per_point"):
                for t in (10, 50, 261):
                    for layer in (0, 1, 2, 3):
                        rows.append(dict(layer=layer, timestep=t, prompt=prompt, matcher=matcher,
                                         averaging=averaging, alpha=0.1, pck=10.0 * layer + t / 100, n_pairs=4))
    return pd.DataFrame(rows)


def test_plot_pck_grid_heatmap_and_line():
    table = _sweep_table()
    fig = viz.plot_pck_grid(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 + 1  # one panel per prompt plus the colour bar
    vals = fig.axes[0].collections[0].get_array()  # the seaborn heat-map's cells
    assert vals.shape == (4, 3)  # layers × timesteps
    assert vals[1, 2] == pytest.approx(10.0 + 2.61)
    assert [t.get_text() for t in fig.axes[0].texts][5] == "12.6"  # values written in the cells, row by row
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["up0", "up1", "up2", "up3"]
    assert fig.axes[0].get_title() == "prompt: empty"
    assert len(fig.axes[0].collections) == len(fig.axes[1].collections) == 1  # one shared colour bar
    fig = viz.plot_pck_grid(table, kind="line", matcher="nn", averaging="per_point")
    assert len(fig.axes) == 2
    assert len(fig.axes[1].get_lines()) == 4  # one line per layer
    one = table[table.prompt == "text"]
    assert len(viz.plot_pck_grid(one).axes) == 2
    with pytest.raises(ValueError, match="no rows"):
        viz.plot_pck_grid(table, matcher="softmax")
    with pytest.raises(ValueError, match="lacks"):
        viz.plot_pck_grid(table.drop(columns="timestep"))


# ------------------------------------------------------------------------------------------------------ saving


def test_save_figure_png_is_byte_stable(tmp_path):
    def make():
        fig = viz.plot_pck_grid(_sweep_table())
        return fig

    a = viz.save_figure(make(), tmp_path / "deep" / "dir" / "a.png")
    b = viz.save_figure(make(), tmp_path / "b.png")
    fig = make()
    c1 = viz.save_figure(fig, tmp_path / "c.png").read_bytes()
    c2 = viz.save_figure(fig, tmp_path / "c.png").read_bytes()
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.read_bytes() == b.read_bytes() == c1 == c2
    assert b"Software" not in a.read_bytes() and b"matplotlib" not in a.read_bytes().lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "c.png", "deep"]  # no temporary left


def test_save_figure_other_formats_and_save_argument(tmp_path):
    fig = viz.plot_similarity(_image(), _image(seed=4), (3, 3), torch.rand(3, 3), img_size=32,
                              save=tmp_path / "sim.png")
    assert (tmp_path / "sim.png").is_file()
    for suffix in (".pdf", ".svg"):
        first = viz.save_figure(fig, tmp_path / f"f{suffix}").read_bytes()
        assert viz.save_figure(fig, tmp_path / f"f{suffix}").read_bytes() == first
    assert viz.save_figure(fig, tmp_path / "noext").name == "noext.png"
    with pytest.raises(ValueError, match="unsupported"):
        viz.save_figure(fig, tmp_path / "f.jpg")


# ------------------------------------------------------------------------------------------------------ bars


def _results(drop=()):
    rows = []
    for cat in ("all", "bike", "bird", "boat", "bottle", "bus"):
        for k, prompt in enumerate(("empty", "single", "cpm")):
            if (cat, prompt) in drop:
                continue
            pck = 40.0 + 10 * k + len(cat)
            rows.append(dict(dataset="spair", category=cat, prompt=prompt, matcher="kernel_softmax", alpha=0.1,
                             averaging="per_image", space="resized", pck=pck, ci_low=pck - 5, ci_high=pck + 2))
    return pd.DataFrame(rows)


def test_category_bars_carry_the_tables_own_interval():
    fig = viz.plot_category_bars(_results(drop={("bird", "single")}), "spair")
    ax = fig.axes[0]
    bars = [list(c) for c in ax.containers if hasattr(c, "patches")]
    assert [len(c) for c in bars] == [6, 5, 6]  # one bar per category and prompt with a value
    assert bars[2][0].get_height() == pytest.approx(60.0 + 3)  # "cpm" at "all"
    whiskers = [c for c in ax.containers if c not in ax.containers[:3]]
    assert len(whiskers) == 3
    segments = whiskers[2].lines[2][0].get_segments()  # the "cpm" whiskers: from ci_low to ci_high
    assert segments[0][:, 1] == pytest.approx([63.0 - 5, 63.0 + 2])
    assert segments[0][0, 0] == pytest.approx(bars[2][0].get_x() + bars[2][0].get_width() / 2)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["empty", "single", "cpm"]
    assert ax.get_xticklabels()[0].get_text() == "all"
    no_ci = viz.plot_category_bars(_results(), "spair", ci=False)
    assert len(no_ci.axes[0].containers) == 3


# ------------------------------------------------------------------------------------------------------ notebook 02


def _prompt_table():
    rows = [dict(prompt=p, timestep=50, matcher=m, averaging=avg, alpha=a, pck=10.0 * k + 100 * a, n=3)
            for k, p in enumerate(("empty", "text", "single")) for m in ("kernel_softmax", "nn")
            for avg in ("per_image", "per_point") for a in (0.05, 0.1, 0.15)]
    return pd.DataFrame(rows)


def _training_tables():
    from sd4match_utils.report import SUMMARY_COLUMNS

    curves = pd.DataFrame([dict(prompt=p, kind=kind, step=s, epoch=s / 2, loss=2.0 - 0.1 * s if kind == "train" else
                                np.nan, val_pck=np.nan if kind == "train" else 20.0, seconds=0.0)
                           for p in ("single", "class") for s in range(4) for kind in ("train", "val")])
    summary = pd.DataFrame([dict(prompt=p, run=p, reused=None, steps=3, total_steps=3, val_pck_before=b,
                                 val_pck_last=a, best_val_pck=a, best_step=3, first_loss=2.0, last_loss=1.7)
                            for p, b, a in (("single", 10.0, 25.0), ("class", 12.0, 18.5))],
                           columns=["prompt", *SUMMARY_COLUMNS])
    return curves, summary


def _ablation_table(axis, values):
    rows = [dict(axis=axis, value=v, matcher=m, averaging=avg, alpha=a, pck=float(i + 10 * (m == "nn")) + 100 * a,
                 n=2) for i, v in enumerate(values) for m in ("kernel_softmax", "nn")
            for avg in ("per_image", "per_point") for a in (0.05, 0.1)]
    return pd.DataFrame(rows)


def test_plot_prompt_comparison():
    fig = viz.plot_prompt_comparison(_prompt_table(), title="prompts")
    assert len(fig.axes) == 4  # matchers × averagings
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["kernel_softmax · per_image", "nn · per_image", "kernel_softmax · per_point", "nn · per_point"]
    ax = fig.axes[0]
    assert [len(c) for c in ax.containers] == [3, 3, 3]  # one bar per prompt for each α
    assert [b.get_height() for b in ax.containers[1]] == pytest.approx([10.0, 20.0, 30.0])  # α = 0.1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["α=0.05", "α=0.1", "α=0.15"]
    assert fig._suptitle.get_text() == "prompts"


def test_plot_training():
    curves, summary = _training_tables()
    fig = viz.plot_training(curves, summary)
    ax_loss, ax_val = fig.axes
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["single", "class"]
    lines = [line for line in ax_loss.get_lines() if len(line.get_xdata())]
    assert len(lines) == 2 and list(lines[0].get_ydata()) == pytest.approx([2.0, 1.9, 1.8, 1.7])
    heights = [[b.get_height() for b in c] for c in ax_val.containers]
    assert heights == [pytest.approx([10.0, 12.0]), pytest.approx([25.0, 18.5])]  # before, after
    assert [t.get_text() for t in ax_val.texts] == ["10.0", "12.0", "25.0", "18.5"]  # bar labels


def test_plot_ablations():
    tables = {"lr": _ablation_table("lr", [0.001, 0.01, 0.1]), "init": _ablation_table("init", ["random", "text"]),
              "test_timestep": _ablation_table("test_timestep", [50, 261]),
              "length": _ablation_table("length", [1, 5, 75])}
    fig = viz.plot_ablations(tables, alpha=0.1, base={"lr": 0.01, "init": "random"})
    assert len(fig.axes) == 6 and [ax.get_visible() for ax in fig.axes] == [True] * 4 + [False] * 2
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.001", "0.01", "0.1"]
    assert ax.get_xlabel() == "lr"
    ys = [list(line.get_ydata()) for line in ax.get_lines() if len(line.get_ydata()) == 3]
    assert ys == [pytest.approx([10.0, 11.0, 12.0]), pytest.approx([20.0, 21.0, 22.0])]  # one line per matcher
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["kernel_softmax", "nn", "base"]
    assert all(a.get_legend() is None for a in fig.axes[1:])
    # the shared y axis starts at 0 and its top fits every panel (the last one reaches 10 + 3 + 10)
    assert fig.axes[3].get_ylim()[0] == 0 and fig.axes[3].get_ylim()[1] >= 22.0


def test_notebook_02_plots_save(tmp_path):
    curves, summary = _training_tables()
    figs = {
        "prompts.png": lambda p: viz.plot_prompt_comparison(_prompt_table(), save=p),
        "training.png": lambda p: viz.plot_training(curves, summary, save=p),
        "ablations.png": lambda p: viz.plot_ablations({"lr": _ablation_table("lr", [0.01, 0.1])}, base={"lr": 0.01},
                                                      save=p),
    }
    for name, draw in figs.items():
        plt.close(draw(tmp_path / name))
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(figs)  # no temporary left
