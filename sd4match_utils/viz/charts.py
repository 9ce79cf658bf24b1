"""Charts of PCK tables, drawn with seaborn: the layer × timestep grid (notebook 01), prompt comparison, training
curves and ablation sweeps (notebook 02), benchmark bars per dataset, matcher, category and difficulty flag
(notebooks 03, 04), and the CPM's gate and token norms before and after training (notebook 03)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..benchmark import BENCHMARK_NAMES, select
from ..matching import MATCHERS
from .base import axes_grid, finish


def _pick(frame: pd.DataFrame, column: str, value, preferred) -> pd.DataFrame:
    """Rows with ``column == value``; ``value=None`` with several values present: the preferred one (or the first
    in sorted order)."""
    if value is None and column in frame.columns:
        values = list(frame[column].unique())
        if len(values) <= 1:
            return frame
        value = preferred if preferred in values else sorted(values, key=str)[0]
    return select(frame, **{column: value})


def plot_pck_grid(table: pd.DataFrame, kind: str = "heatmap", matcher: str | None = None,
                  averaging: str | None = None, alpha: float | None = None, vmin: float = 0.0,
                  vmax: float | None = None, title: str | None = None, axes=None,
                  save: str | Path | None = None) -> Figure:
    """PCK over layer × timestep, one panel per prompt, from a table with columns ``layer, timestep, prompt, pck``
    (and optionally ``matcher, averaging, alpha``, then by default ``kernel_softmax``, ``per_image``, 0.1).

    Args:
        kind: ``"heatmap"`` (layers × timesteps, values in the cells, one shared colour bar) or ``"line"`` (PCK
            against timestep, one line per layer).
        vmin, vmax: colour or y-axis range; ``vmax`` defaults to the data's maximum (at least 1).
        axes: ``P`` axes (plus one for the colour bar with ``"heatmap"``); default a new figure.
    """
    if kind not in ("heatmap", "line"):
        raise ValueError(f"kind must be 'heatmap' or 'line', got {kind!r}")
    missing = [c for c in ("layer", "timestep", "prompt", "pck") if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks the columns: {', '.join(missing)}")
    frame = _pick(table, "matcher", matcher, "kernel_softmax")
    frame = _pick(frame, "averaging", averaging, "per_image")
    frame = _pick(frame, "alpha", alpha, 0.1)
    if frame.empty:
        raise ValueError("no rows left to plot after selecting matcher / averaging / alpha")
    prompts = list(dict.fromkeys(frame["prompt"]))
    layers, timesteps = sorted(frame["layer"].unique()), sorted(frame["timestep"].unique())
    vmax = max(float(frame["pck"].max()), 1.0) if vmax is None else float(vmax)
    n = len(prompts) + (kind == "heatmap")
    if axes is None and kind == "heatmap":
        fig, grid = plt.subplots(1, n, figsize=(0.9 * len(timesteps) * len(prompts) + 2.2, 0.6 * len(layers) + 1.6),
                                 squeeze=False, gridspec_kw={"width_ratios": [1.0] * len(prompts) + [0.06]})
    else:
        fig, grid = axes_grid(axes, 1, n, "plot_pck_grid", panel=3.4, sharey=True)
    label = " · ".join(str(frame[c].iloc[0]) for c in ("matcher", "averaging") if c in frame.columns)
    if "alpha" in frame.columns:
        label = f"PCK@{float(frame['alpha'].iloc[0]):g} " + (f"({label})" if label else "")
    label = label or "PCK"
    for ax, prompt in zip(grid[0], prompts):
        values = frame[frame["prompt"] == prompt].pivot_table(index="layer", columns="timestep", values="pck",
                                                               aggfunc="mean").reindex(index=layers, columns=timesteps)
        if kind == "heatmap":  # one colour bar, drawn by the last prompt's panel into the extra axes
            last = prompt == prompts[-1]
            sns.heatmap(values.rename(index=lambda l: f"up{l}").astype(float), ax=ax, cmap="viridis", vmin=vmin,
                        vmax=vmax, annot=True, fmt=".1f", annot_kws={"fontsize": 8}, cbar=last,
                        cbar_ax=grid[0, -1] if last else None, cbar_kws={"label": label})
            ax.tick_params(axis="y", labelrotation=0)
            ax.set_ylabel("up-block")
        else:
            for l in layers:
                ax.plot(timesteps, values.loc[l].to_numpy(dtype=float), marker="o", label=f"up_blocks[{l}]")
            ax.set_ylabel(label)
            ax.set_ylim(vmin, vmax * 1.05)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax.set_xlabel("timestep t")
        ax.set_title(f"prompt: {prompt}", fontsize=9)
    return finish(fig, save, title, own=axes is None)


def _small_legend(ax, title: str | None = None) -> None:
    """Restyle the legend seaborn drew (if it drew one): small type, best place, the given title."""
    if ax.get_legend() is not None:
        sns.move_legend(ax, "best", fontsize=7, title=title, title_fontsize=7)


def _grouped_bars(ax, frame: pd.DataFrame, x: str, xs: list, prompts: list, ylabel: str, ci: bool = True,
                  legend: bool = True) -> None:
    """Bars of ``pck`` at each ``x`` value (groups) for each prompt, with the table's own ``ci_low`` / ``ci_high``
    whiskers when present (bootstrap intervals over pairs, not seaborn's)."""
    drawn = len(ax.containers)
    sns.barplot(data=frame, x=x, y="pck", hue="prompt", order=xs, hue_order=prompts, errorbar=None, palette="tab10",
                gap=0.08, legend=legend, ax=ax)
    if ci and {"ci_low", "ci_high"} <= set(frame.columns):
        for prompt, bars in zip(prompts, ax.containers[drawn:]):  # one container per prompt, a bar per value
            if not len(bars):
                continue
            centres = np.array([b.get_x() + b.get_width() / 2 for b in bars])
            heights = np.array([b.get_height() for b in bars])
            rows = frame[frame["prompt"] == prompt].set_index(x).reindex([xs[int(round(c))] for c in centres])
            err = np.clip([heights - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - heights], 0,
                          None)
            ax.errorbar(centres, heights, yerr=np.nan_to_num(err), fmt="none", ecolor="black", elinewidth=0.8,
                        capsize=2)
    ax.tick_params(axis="x", labelsize=8)
    if len(xs) > 4:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_xlabel("")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    _small_legend(ax, title="prompt")


def _metric_label(alpha: float, averaging: str, matcher: str | None) -> str:
    return f"PCK@{alpha:g} ({averaging.replace('_', ' ')}{', ' + matcher if matcher else ''}) %"


def plot_overview(results: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1,
                  averaging: str = "per_image", space: str = "resized", title: str | None = None,
                  save: str | Path | None = None) -> Figure:
    """Overall PCK per dataset (groups) and prompt (bars) with bootstrap-CI whiskers."""
    frame = select(results, matcher=matcher, alpha=alpha, averaging=averaging, space=space, category="all")
    frame = frame.assign(dataset=frame["dataset"].replace(BENCHMARK_NAMES))
    datasets, prompts = list(dict.fromkeys(frame["dataset"])), list(dict.fromkeys(frame["prompt"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 1.4 * len(datasets) * max(1, len(prompts)) / 2), 3.4))
    _grouped_bars(ax, frame, "dataset", datasets, prompts, _metric_label(alpha, averaging, matcher))
    return finish(fig, save, title)


def plot_matchers(results: pd.DataFrame, alpha: float = 0.1, averaging: str = "per_image", space: str = "resized",
                  title: str | None = None, save: str | Path | None = None) -> Figure:
    """One panel per dataset (stacked): PCK of every matcher (groups) for each prompt (bars), CI whiskers."""
    frame = select(results, alpha=alpha, averaging=averaging, space=space, category="all")
    datasets, prompts = list(dict.fromkeys(frame["dataset"])), list(dict.fromkeys(frame["prompt"]))
    matchers = [m for m in MATCHERS if m in set(frame["matcher"])]
    width = min(10.0, max(5.0, 0.35 * len(matchers) * max(len(prompts), 1) + 1.5))
    fig, axes = plt.subplots(max(len(datasets), 1), 1, figsize=(width, 2.8 * max(len(datasets), 1)), squeeze=False)
    for i, (ax, d) in enumerate(zip(axes[:, 0], datasets)):
        _grouped_bars(ax, frame[frame["dataset"] == d], "matcher", matchers, prompts,
                      _metric_label(alpha, averaging, None), legend=i == 0)
        ax.set_title(BENCHMARK_NAMES.get(d, d), fontsize=9)
    return finish(fig, save, title)


def plot_category_bars(results: pd.DataFrame, dataset: str, matcher: str = "kernel_softmax", alpha: float = 0.1,
                       averaging: str = "per_image", space: str = "resized", prompts: Sequence[str] | None = None,
                       ci: bool = True, title: str | None = None, ax=None, save: str | Path | None = None) -> Figure:
    """Grouped bar chart: one group per category (``"all"`` first), one bar per prompt, CI whiskers."""
    frame = select(results, dataset=dataset, matcher=matcher, alpha=alpha, averaging=averaging, space=space)
    prompts = list(prompts) if prompts is not None else list(dict.fromkeys(frame["prompt"]))
    cats = sorted(set(frame["category"]), key=lambda c: (c != "all", str(c)))
    own = ax is None
    if own:
        ax = plt.subplots(figsize=(max(4.5, 0.35 * len(cats) * max(len(prompts), 1) + 1.5), 3.4))[1]
    _grouped_bars(ax, frame, "category", cats, prompts, _metric_label(alpha, averaging, matcher), ci=ci)
    if own:
        return finish(ax.figure, save, title)
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def plot_flags(flags: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1,
               averaging: str = "per_image", space: str = "resized", dataset: str | None = None,
               title: str | None = None, save: str | Path | None = None) -> Figure:
    """One panel per difficulty flag: PCK at each flag value (``all`` first) for each prompt, CI whiskers."""
    frame = select(flags, matcher=matcher, alpha=alpha, averaging=averaging, space=space, dataset=dataset)
    frame = frame.assign(value=frame["value"].astype(str))
    names, prompts = list(dict.fromkeys(frame["flag"])), list(dict.fromkeys(frame["prompt"]))
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.0 * max(len(names), 1), 3.2), squeeze=False)
    for i, (ax, flag) in enumerate(zip(axes[0], names)):
        sub = frame[frame["flag"] == flag]
        values = sorted(set(sub["value"]), key=lambda v: (v != "all", v))
        _grouped_bars(ax, sub, "value", values, prompts, _metric_label(alpha, averaging, matcher), legend=i == 0)
        ax.set_title(flag.replace("_", " "), fontsize=9)
    return finish(fig, save, title)


def plot_cpm_state(before, after, labels: tuple[str, str] = ("before training", "after training"),
                   title: str | None = None, save: str | Path | None = None) -> Figure:
    """What training did to a CPM: histogram of the gate ``tanh(alpha_cond)`` before and after, heat-maps of the
    gate ``(C, D)`` after training and of its change, and the L2 norm per token
    (:meth:`~sd4match_utils.conditioning.ConditionalPrompt.token_norms`) before (dashed) and after (solid)."""
    g0, g1 = before.gate().numpy(), after.gate().numpy()
    n0, n1 = before.token_norms(), after.token_norms()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    ax = axes[0, 0]
    sns.histplot({labels[0]: g0.ravel(), labels[1]: g1.ravel()}, bins=np.linspace(-1, 1, 51), alpha=0.55,
                 palette=["#7f7f7f", "#1f77b4"], ax=ax)
    ax.set_xlabel("gate value tanh(α)", fontsize=8)
    ax.set_ylabel("entries", fontsize=8)
    _small_legend(ax)
    ax.set_title("gate values", fontsize=9)
    delta = g1 - g0
    lim = float(np.abs(delta).max()) or 1e-6
    for ax, values, cmap, vlim, name in (
        (axes[0, 1], g1, "RdBu_r", 1.0, f"gate tanh(α) {labels[1]} (C × D = {g1.shape[0]} × {g1.shape[1]})"),
        (axes[1, 0], delta, "PuOr", lim, f"gate change ({labels[1]} − {labels[0]}), max |Δ| = {lim:.3g}"),
    ):
        sns.heatmap(values, ax=ax, cmap=cmap, vmin=-vlim, vmax=vlim, cbar_kws={"fraction": 0.046}, rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("text channel", fontsize=8)
        ax.set_ylabel("conditional token", fontsize=8)
    ax = axes[1, 1]
    g = len(n0["global"])
    colours = {"global": "#2ca02c", "positional": "#ff7f0e", "gate": "#1f77b4"}
    for name, offset in (("global", 0), ("positional", g), ("gate", g)):
        xs = np.arange(len(n0[name])) + offset
        ax.plot(xs, n0[name].numpy(), "--", color=colours[name], alpha=0.7, linewidth=1)
        ax.plot(xs, n1[name].numpy(), "-", color=colours[name], linewidth=1.2, label=name)
    ax.axvline(g - 0.5, color="black", linewidth=0.6, alpha=0.5)
    ax.set_xlabel(f"prompt token (global 0..{g - 1} | conditional {g}..{g + len(n0['gate']) - 1})", fontsize=8)
    ax.set_ylabel("L2 norm", fontsize=8)
    ax.set_title(f"token norms ({labels[0]} dashed, {labels[1]} solid)", fontsize=9)
    ax.legend(fontsize=7)
    for a in axes.ravel():
        a.tick_params(labelsize=7)
    return finish(fig, save, title)


def plot_prompt_comparison(table: pd.DataFrame, title: str | None = None, save: str | Path | None = None) -> Figure:
    """Grouped bars of test PCK: one panel per matcher (columns) × averaging (rows), prompts on the x axis, one bar
    per α; ``table``: :func:`~sd4match_utils.metrics.pck_records` of one space and category plus ``prompt``."""
    alphas = sorted(table["alpha"].unique())
    data = table.assign(α=table["alpha"].map(lambda a: f"α={a:g}"))
    grid = sns.catplot(data=data, kind="bar", x="prompt", y="pck", hue="α", col="matcher", row="averaging",
                       order=list(dict.fromkeys(table["prompt"])), hue_order=[f"α={a:g}" for a in alphas],
                       col_order=list(dict.fromkeys(table["matcher"])),
                       row_order=list(dict.fromkeys(table["averaging"])), errorbar=None, sharey=True,
                       height=2.8, aspect=3.6 / 2.8, legend_out=False)
    grid.set_titles("{col_name} · {row_name}", size=9)
    grid.set_axis_labels("", "test PCK (%)")
    for ax in grid.axes.flat:
        ax.grid(axis="y", alpha=0.3)
    if grid.legend is not None:  # inside the top-right panel
        sns.move_legend(grid, "upper right", bbox_to_anchor=(1, 1), bbox_transform=grid.axes[0, -1].transAxes,
                        fontsize=7, title=None)
    return finish(grid.figure, save, title)


def plot_training(curves: pd.DataFrame, summary: pd.DataFrame, title: str | None = None,
                  save: str | Path | None = None) -> Figure:
    """Training loss against step, one line per prompt (``curves``: :func:`~sd4match_utils.report.training_curves`),
    and validation PCK before / after training as bars (``summary``: :func:`~sd4match_utils.report.training_table`).
    """
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    sns.lineplot(data=curves[curves["kind"] == "train"], x="step", y="loss", hue="prompt", marker=".",
                 errorbar=None, ax=ax_loss)
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set(xlabel="optimiser step", ylabel="training loss")
    ax_loss.grid(alpha=0.3)
    _small_legend(ax_loss)
    when = {"val_pck_before": "before training", "val_pck_last": "after training"}
    val = summary.melt(id_vars="prompt", value_vars=list(when), var_name="when", value_name="pck")
    val = val.assign(when=val["when"].map(when), pck=pd.to_numeric(val["pck"]))
    sns.barplot(data=val, x="prompt", y="pck", hue="when", hue_order=list(when.values()), errorbar=None, ax=ax_val)
    for bars in ax_val.containers:
        ax_val.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_val.margins(y=0.15)
    ax_val.set(xlabel="", ylabel="validation nn-PCK@0.1 (%)")
    ax_val.grid(axis="y", alpha=0.3)
    _small_legend(ax_val)
    return finish(fig, save, title)


def plot_ablations(tables: Mapping[str, pd.DataFrame], alpha: float = 0.1, averaging: str = "per_image",
                   base: Mapping[str, object] | None = None, title: str | None = None,
                   save: str | Path | None = None) -> Figure:
    """One panel per axis: test PCK@``alpha`` against the axis's values (categorical x), one line per matcher.

    Args:
        tables: axis → PCK records per value (columns ``value, matcher, averaging, alpha, pck``), in drawing order.
        base: axis → the base run's value, shaded in its panel.
    """
    n = len(tables)
    cols = max(min(n, 3), 1)
    rows = max(math.ceil(n / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, sharey=True)
    flat = list(axes.ravel())
    show = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    for i, (ax, (axis, table)) in enumerate(zip(flat, tables.items())):
        sub = table[(table["averaging"] == averaging) & np.isclose(table["alpha"], alpha)]
        values, matchers = list(dict.fromkeys(sub["value"])), list(dict.fromkeys(sub["matcher"]))
        sns.pointplot(data=sub.assign(shown=sub["value"].map(show)), x="shown", y="pck", hue="matcher",
                      order=[show(v) for v in values], hue_order=matchers, errorbar=None,
                      markers=["os^D"[k % 4] for k in range(len(matchers))],
                      linestyles=[("-", "--", ":", "-.")[k % 4] for k in range(len(matchers))], legend=i == 0, ax=ax)
        if base is not None and axis in base and base[axis] in values:
            at = values.index(base[axis])
            ax.axvspan(at - 0.25, at + 0.25, color="0.85", zorder=0, label="base")
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xlabel(axis)
        ax.set_ylabel(f"test PCK@{alpha:g} ({averaging}, %)" if i % cols == 0 else "")
        ax.grid(alpha=0.3)
    for ax in flat[n:]:
        ax.set_visible(False)
    if n:
        flat[0].set_ylim(bottom=0)  # once all panels are drawn: the shared top then fits every panel's values
        flat[0].legend(fontsize=7)
    return finish(fig, save, title)
