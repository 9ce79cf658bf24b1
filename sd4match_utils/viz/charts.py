"""Charts of PCK tables: the layer × timestep grid (notebook 01), benchmark bars per dataset, matcher, category and
difficulty flag (notebooks 03, 04), and the CPM's gate and token norms before and after training (notebook 03)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..benchmark import BENCHMARK_NAMES, select
from ..matching import MATCHERS
from .base import finish, flat_axes, new_axes


def _pick(frame: pd.DataFrame, column: str, value, preferred) -> pd.DataFrame:
    """Keep rows where ``column == value``; when ``value`` is ``None`` and several values exist, keep the
    preferred one (or the first in sorted order)."""
    if value is None and column in frame.columns:
        values = list(frame[column].unique())
        if len(values) <= 1:
            return frame
        value = preferred if preferred in values else sorted(values, key=str)[0]
    return select(frame, **{column: value})


def plot_pck_grid(
    table: pd.DataFrame,
    kind: str = "heatmap",
    matcher: str | None = None,
    averaging: str | None = None,
    alpha: float | None = None,
    vmin: float = 0.0,
    vmax: float | None = None,
    title: str | None = None,
    axes=None,
    save: str | Path | None = None,
) -> Figure:
    """PCK over layer × timestep, one panel per prompt.

    Args:
        table: tidy rows with columns ``layer, timestep, prompt, pck`` and optionally ``matcher``,
            ``averaging``, ``alpha`` (the sweep table of notebook 01).
        kind: ``"heatmap"`` (rows = layers, columns = timesteps, values written in the cells, one shared colour
            bar) or ``"line"`` (PCK against timestep, one line per layer).
        matcher, averaging, alpha: the slice to draw; left ``None`` they default to ``kernel_softmax``,
            ``per_image`` and 0.1 when several are present.
        vmin, vmax: colour (heat-map) or y-axis (line) range; ``vmax`` defaults to the data's maximum (at least 1).
        title: optional figure title.
        axes: ``P`` axes for ``P`` prompts (plus one for the colour bar with ``kind="heatmap"``); default a new
            figure.
        save: optional path for :func:`save_figure`.

    Returns:
        The figure: ``P + 1`` axes for ``"heatmap"`` (the last is the colour bar), ``P`` for ``"line"``.
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
    layers = sorted(frame["layer"].unique())
    timesteps = sorted(frame["timestep"].unique())
    top = float(frame["pck"].max())
    vmax = max(top, 1.0) if vmax is None else float(vmax)
    n = len(prompts) + (1 if kind == "heatmap" else 0)
    if axes is None:
        if kind == "heatmap":
            width = [1.0] * len(prompts) + [0.06]
            fig, grid = plt.subplots(1, n, figsize=(0.9 * len(timesteps) * len(prompts) + 2.2, 0.6 * len(layers) + 1.6),
                                     squeeze=False, gridspec_kw={"width_ratios": width})
        else:
            fig, grid = new_axes(1, n, panel=3.4, sharey=True)
        flat = list(grid.ravel())
    else:
        flat = flat_axes(axes, n, "plot_pck_grid")
        fig = flat[0].figure
    label = " · ".join(str(frame[c].iloc[0]) for c in ("matcher", "averaging") if c in frame.columns)
    if "alpha" in frame.columns:
        label = f"PCK@{float(frame['alpha'].iloc[0]):g} " + (f"({label})" if label else "")
    image = None
    for ax, prompt in zip(flat, prompts):
        sub = frame[frame["prompt"] == prompt]
        grid_vals = sub.pivot_table(index="layer", columns="timestep", values="pck", aggfunc="mean")
        grid_vals = grid_vals.reindex(index=layers, columns=timesteps)
        if kind == "heatmap":
            vals = grid_vals.to_numpy(dtype=float)
            image = ax.imshow(vals, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
            for i in range(vals.shape[0]):
                for j in range(vals.shape[1]):
                    if np.isfinite(vals[i, j]):
                        shade = (vals[i, j] - vmin) / max(vmax - vmin, 1e-9)
                        ax.text(j, i, f"{vals[i, j]:.1f}", ha="center", va="center", fontsize=8,
                                color="black" if shade > 0.6 else "white")
            ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
            ax.set_yticks(range(len(layers)), [f"up{l}" for l in layers])
            ax.set_xlabel("timestep t")
            ax.set_ylabel("up-block")
        else:
            for l in layers:
                ax.plot(timesteps, grid_vals.loc[l].to_numpy(dtype=float), marker="o", label=f"up_blocks[{l}]")
            ax.set_xlabel("timestep t")
            ax.set_ylabel(label or "PCK")
            ax.set_ylim(vmin, vmax * 1.05)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax.set_title(f"prompt: {prompt}", fontsize=9)
    if kind == "heatmap":
        cbar = fig.colorbar(image, cax=flat[-1])
        cbar.set_label(label or "PCK")
    return finish(fig, save, title, own=axes is None)


def _grouped_bars(ax, frame: pd.DataFrame, x: str, hue: str, xs: list, hues: list, value: str = "pck",
                  ci: bool = True) -> None:
    """Bars of ``value`` at each ``x`` (groups) for each ``hue`` (bars within a group), CI whiskers when present."""
    width = 0.8 / max(len(hues), 1)
    colours = plt.get_cmap("tab10")
    for j, h in enumerate(hues):
        sub = frame[frame[hue] == h].set_index(x)
        vals = [float(sub.loc[v, value]) if v in sub.index else math.nan for v in xs]
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        err = None
        if ci and {"ci_low", "ci_high"} <= set(sub.columns):
            lo = [float(sub.loc[v, "ci_low"]) if v in sub.index else math.nan for v in xs]
            hi = [float(sub.loc[v, "ci_high"]) if v in sub.index else math.nan for v in xs]
            err = np.nan_to_num(np.clip(np.array([np.subtract(vals, lo), np.subtract(hi, vals)]), 0, None))
        ax.bar(pos, np.nan_to_num(vals), width * 0.92, yerr=err, capsize=2, label=str(h), color=colours(j % 10),
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(np.arange(len(xs)))
    ax.set_xticklabels([str(v) for v in xs], rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center",
                       fontsize=8)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)


def _metric_label(alpha: float, averaging: str, matcher: str | None) -> str:
    return f"PCK@{alpha:g} ({averaging.replace('_', ' ')}{', ' + matcher if matcher else ''}) %"


def plot_overview(results: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1,
                  averaging: str = "per_image", space: str = "resized", title: str | None = None,
                  save: str | Path | None = None) -> Figure:
    """Overall PCK per dataset (groups) and prompt (bars) with bootstrap-CI whiskers."""
    frame = select(results, matcher=matcher, alpha=alpha, averaging=averaging, space=space, category="all")
    datasets, prompts = list(dict.fromkeys(frame["dataset"])), list(dict.fromkeys(frame["prompt"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 1.4 * len(datasets) * max(1, len(prompts)) / 2), 3.4))
    _grouped_bars(ax, frame.assign(dataset=frame["dataset"].map(lambda d: BENCHMARK_NAMES.get(d, d))), "dataset",
                  "prompt", [BENCHMARK_NAMES.get(d, d) for d in datasets], prompts)
    ax.set_ylabel(_metric_label(alpha, averaging, matcher), fontsize=8)
    ax.legend(fontsize=7, title="prompt", title_fontsize=7)
    return finish(fig, save, title)


def plot_matchers(results: pd.DataFrame, alpha: float = 0.1, averaging: str = "per_image", space: str = "resized",
                  title: str | None = None, save: str | Path | None = None) -> Figure:
    """One panel per dataset (stacked): PCK of every matcher (groups) for each prompt (bars), CI whiskers."""
    frame = select(results, alpha=alpha, averaging=averaging, space=space, category="all")
    datasets = list(dict.fromkeys(frame["dataset"]))
    prompts = list(dict.fromkeys(frame["prompt"]))
    matchers = [m for m in MATCHERS if m in set(frame["matcher"])]
    width = min(10.0, max(5.0, 0.35 * len(matchers) * max(len(prompts), 1) + 1.5))
    fig, axes = plt.subplots(max(len(datasets), 1), 1, figsize=(width, 2.8 * max(len(datasets), 1)), squeeze=False)
    for ax, d in zip(axes[:, 0], datasets):
        _grouped_bars(ax, frame[frame["dataset"] == d], "matcher", "prompt", matchers, prompts)
        ax.set_title(BENCHMARK_NAMES.get(d, d), fontsize=9)
        ax.set_ylabel(_metric_label(alpha, averaging, None), fontsize=8)
    axes[0][0].legend(fontsize=7, title="prompt", title_fontsize=7)
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
        fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * len(cats) * max(len(prompts), 1) + 1.5), 3.4))
    else:
        fig = ax.figure
    _grouped_bars(ax, frame, "category", "prompt", cats, prompts, ci=ci)
    ax.set_ylabel(_metric_label(alpha, averaging, matcher), fontsize=8)
    ax.legend(fontsize=7, title="prompt", title_fontsize=7)
    if own:
        return finish(fig, save, title)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_flags(flags: pd.DataFrame, matcher: str = "kernel_softmax", alpha: float = 0.1,
               averaging: str = "per_image", space: str = "resized", dataset: str | None = None,
               title: str | None = None, save: str | Path | None = None) -> Figure:
    """One panel per difficulty flag: PCK at each flag value (``all`` first) for each prompt, CI whiskers."""
    frame = select(flags, matcher=matcher, alpha=alpha, averaging=averaging, space=space, dataset=dataset)
    names = list(dict.fromkeys(frame["flag"]))
    prompts = list(dict.fromkeys(frame["prompt"]))
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.0 * max(len(names), 1), 3.2), squeeze=False)
    for ax, flag in zip(axes[0], names):
        sub = frame[frame["flag"] == flag].copy()
        sub["value"] = sub["value"].astype(str)
        values = sorted(set(sub["value"]), key=lambda v: (v != "all", v))
        _grouped_bars(ax, sub, "value", "prompt", values, prompts)
        ax.set_title(flag.replace("_", " "), fontsize=9)
        ax.set_ylabel(_metric_label(alpha, averaging, matcher), fontsize=8)
    if names:
        axes[0][0].legend(fontsize=7, title="prompt", title_fontsize=7)
    return finish(fig, save, title)


def plot_cpm_state(before, after, labels: tuple[str, str] = ("before training", "after training"),
                   title: str | None = None, save: str | Path | None = None) -> Figure:
    """What training did to a CPM's gate and tokens.

    Panels: (1) histogram of the gate values ``tanh(alpha_cond)`` (all ``C × D`` entries) before and after;
    (2) heat-map of the gate after training ``(C, D)``; (3) heat-map of its change; (4) L2 norm per token of
    ``global_embeds`` (tokens ``0..G-1``), ``positional_embedding`` and the gate (tokens ``G..G+C-1``), before
    (dashed) and after (solid) — :meth:`~sd4match_utils.conditioning.ConditionalPrompt.token_norms`.
    """
    g0, g1 = before.gate().numpy(), after.gate().numpy()
    n0, n1 = before.token_norms(), after.token_norms()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    ax = axes[0, 0]
    bins = np.linspace(-1, 1, 51)
    ax.hist(g0.ravel(), bins=bins, alpha=0.55, label=labels[0], color="#7f7f7f")
    ax.hist(g1.ravel(), bins=bins, alpha=0.55, label=labels[1], color="#1f77b4")
    ax.set_xlabel("gate value tanh(α)", fontsize=8)
    ax.set_ylabel("entries", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title("gate values", fontsize=9)
    ax = axes[0, 1]
    im = ax.imshow(g1, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(f"gate tanh(α) {labels[1]} (C × D = {g1.shape[0]} × {g1.shape[1]})", fontsize=9)
    ax.set_xlabel("text channel", fontsize=8)
    ax.set_ylabel("conditional token", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1, 0]
    delta = g1 - g0
    lim = float(np.abs(delta).max()) or 1e-6
    im = ax.imshow(delta, aspect="auto", cmap="PuOr", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_title(f"gate change ({labels[1]} − {labels[0]}), max |Δ| = {lim:.3g}", fontsize=9)
    ax.set_xlabel("text channel", fontsize=8)
    ax.set_ylabel("conditional token", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
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
