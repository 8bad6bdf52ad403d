"""Figures of the patching results, each written as a PNG and a PDF.

Figures are built as ``matplotlib.figure.Figure`` objects, not through ``pyplot``: no backend
is selected, no global figure registry holds them (nothing to close, nothing leaks), and
importing this module changes no matplotlib state. ``savefig`` renders with Agg (PNG) and the
PDF backend directly. Both files are written atomically (``esmsae.io.atomic_path``) and carry
no creation date, so reruns write the same bytes.

Every function returns its ``Figure`` (already saved), so callers and tests can inspect its
axes and artists. Empty inputs give a panel that says there is no data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esmsae.aggregate import CONTROLS, ordered, real_patches, spearman
from esmsae.io import atomic_path
from esmsae.statistics import mean_sem

PathLike = str | os.PathLike
CONTROL_STYLE = {"real": ("C0", "o", "-"), "noop": ("0.5", "s", ":"), "stable": ("C2", "^", "--"),
                 "random": ("C3", "v", "-.")}


def save(fig: Figure, png: PathLike, pdf: PathLike) -> None:
    """Write `fig` to `png` and `pdf` atomically, without timestamps."""
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, metadata={"Software": None})
    with atomic_path(pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": None, "Producer": None})


def note(ax: Axes, text: str) -> None:
    """Say in the middle of an empty panel why it is empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def layer_axis(ax: Axes) -> None:
    """An x axis of layers: labelled, integer ticks."""
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def mean_sem_line(ax: Axes, layers: list[int], samples, *, color: str, label: str, linestyle: str = "-",
                  marker: str | None = "o") -> np.ndarray:
    """At each layer, the mean of that layer's per-mutant values with its s.e.m. as an error bar
    (the mutant as the unit; no bar where it is undefined). Returns the means."""
    stats = [mean_sem(np.asarray(values, dtype=np.float64)) for values in samples]
    mean = np.array([m for m, _ in stats])
    ax.plot(layers, mean, color=color, linestyle=linestyle, marker=marker, label=label)
    ax.errorbar(layers, mean, yerr=np.nan_to_num(np.array([e for _, e in stats]), nan=0.0), fmt="none",
                ecolor=color, capsize=0)
    return mean


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    ncols = max(1, min(n, max_cols))
    return -(-max(n, 1) // ncols), ncols


def _proteins(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["protein"])) if len(frame) else []


def layer_effects(validation: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """Mean |effect| of real patches against layer: one line per protein, error bars ± s.e.m. over mutants.

    `validation` is ``esmsae.aggregate.control_validation``'s frame; its ``real`` rows give the
    mean over mutants of each mutant's mean |effect| and its standard error (the mutant is the
    unit; none where fewer than 2 mutants). One axes holding exactly one ``Line2D`` per protein,
    labelled with its name; the error bars are line collections (``fmt="none"``), not lines.
    """
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    real = validation.loc[validation["control"] == "real"] if len(validation) else validation
    proteins = _proteins(real)
    for i, protein in enumerate(proteins):
        rows = real.loc[real["protein"] == protein].sort_values("layer", kind="mergesort")
        sem = rows["sem_abs_effect"].to_numpy(dtype=np.float64)
        layers = rows["layer"].to_numpy(dtype=np.int64)
        mean = rows["mean_abs_effect"].to_numpy(dtype=np.float64)
        ax.plot(layers, mean, color=f"C{i}", marker="o", label=protein)
        ax.errorbar(layers, mean, yerr=np.nan_to_num(sem, nan=0.0), fmt="none", ecolor=f"C{i}", capsize=0)
    if proteins:
        ax.legend(title="protein")
    if not proteins or not np.isfinite(real["mean_abs_effect"].to_numpy(dtype=np.float64)).any():
        note(ax, "no real patches")
    layer_axis(ax)
    ax.set_ylabel("mean |effect| of real patches (± s.e.m. over mutants)")
    ax.set_title("Patch effect by layer")
    save(fig, png, pdf)
    return fig


def controls(validation: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """Mean |effect| against layer for each control (real, noop, stable, random), one axes per protein.

    Linear y axis, since noop is exactly 0. `validation` is ``control_validation``'s frame;
    each axes holds exactly one data line per control, labelled with the control's name.
    """
    proteins = _proteins(validation)
    nrows, ncols = _grid(len(proteins), max_cols=3)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows), layout="constrained")
    if not proteins:
        ax = fig.add_subplot()
        note(ax, "no patching data")
        layer_axis(ax)
        ax.set_ylabel("mean |effect|")
    for i, protein in enumerate(proteins):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        rows = validation.loc[validation["protein"] == protein]
        for control in CONTROLS:
            part = rows.loc[rows["control"] == control].sort_values("layer", kind="mergesort")
            color, marker, style = CONTROL_STYLE[control]
            layers, mean = part["layer"].to_numpy(dtype=np.int64), part["mean_abs_effect"].to_numpy(dtype=np.float64)
            ax.plot(layers, mean, color=color, marker=marker, linestyle=style, label=control)
            ax.errorbar(layers, mean, yerr=np.nan_to_num(part["sem_abs_effect"].to_numpy(dtype=np.float64), nan=0.0),
                        fmt="none", ecolor=color, capsize=0)
        if not np.isfinite(rows["mean_abs_effect"].to_numpy(dtype=np.float64)).any():
            note(ax, "no patches")
        ax.set_title(protein)
        layer_axis(ax)
        ax.set_ylabel("mean |effect|")
        ax.legend(title="control", fontsize="small")
    fig.suptitle("Real patches against controls")
    save(fig, png, pdf)
    return fig


def delta_vs_effect(tables: Mapping[tuple[str, int], pd.DataFrame], png: PathLike, pdf: PathLike) -> Figure:
    """|Δ latent| against |effect| of real patches: one axes per layer (ascending), one scatter per protein.

    Each panel's title gives the Spearman ρ over all proteins' real patches at that layer
    ("ρ = n/a" for fewer than 3 points or a constant input). A protein keeps its colour
    across panels; a layer without real patches gets an empty panel with a note.
    """
    entries = ordered(tables)
    proteins = list(dict.fromkeys(protein for protein, _, _ in entries))
    color = {protein: f"C{i}" for i, protein in enumerate(proteins)}
    layers = sorted({layer for _, layer, _ in entries})
    nrows, ncols = _grid(len(layers))
    fig = Figure(figsize=(4.2 * ncols, 3.6 * nrows), layout="constrained")
    if not layers:
        ax = fig.add_subplot()
        note(ax, "no patching data")
        ax.set_xlabel("|Δ latent|")
        ax.set_ylabel("|effect|")
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        xs, ys = [], []
        for protein, table_layer, table in entries:
            if table_layer != layer:
                continue
            real = real_patches(table)
            if real.empty:
                continue
            x, y = real["abs_delta"].to_numpy(), real["abs_effect"].to_numpy()
            ax.scatter(x, y, s=10, alpha=0.6, color=color[protein], label=protein, linewidths=0)
            xs.append(x)
            ys.append(y)
        if xs:
            rho, _ = spearman(np.concatenate(xs), np.concatenate(ys))
            ax.legend(title="protein", fontsize="small")
        else:
            rho = float("nan")
            note(ax, "no real patches")
        ax.set_title(f"layer {layer}: ρ = {'n/a' if np.isnan(rho) else f'{rho:.2f}'}")
        ax.set_xlabel("|Δ latent|")
        ax.set_ylabel("|effect|")
    fig.suptitle("Latent change against patch effect")
    save(fig, png, pdf)
    return fig
