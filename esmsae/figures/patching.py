"""Figures of activation patching: effects by layer, the controls, |Δ latent| against effect.

Built as :mod:`esmsae.figures.style` says. Inputs: ``tables/control_validation.csv`` and the
patching tables per (protein, layer). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from esmsae.figures.style import (
    CONTROL_STYLE,
    PathLike,
    grid,
    layer_axis,
    note,
    proteins_of,
    save,
)
from esmsae.pipeline.columns import CONTROLS, read_table
from esmsae.pipeline.keys import PAIR, keyed
from esmsae.tables.patching import ordered, read_patching, real_patches
from esmsae.tables.statistics import spearman


def layer_effects(validation: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """Mean |effect| of real patches against layer: one line per protein, error bars ± s.e.m. over mutants.

    `validation` is ``esmsae.tables.patching.control_validation``'s frame; its ``real`` rows give the
    mean over mutants of each mutant's mean |effect| and its standard error (the mutant is the
    unit; none where fewer than 2 mutants). One axes holding exactly one ``Line2D`` per protein,
    labelled with its name; the error bars are line collections (``fmt="none"``), not lines.
    """
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    real = validation.loc[validation["control"] == "real"] if len(validation) else validation
    proteins = proteins_of(real)
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
    proteins = proteins_of(validation)
    nrows, ncols = grid(len(proteins), max_cols=3)
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
    nrows, ncols = grid(len(layers))
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


# -- figures: one mechanism; each figure says how its inputs are read and how it is drawn --------
def read_validation(inputs: Mapping[str, Path]) -> dict:
    return {"validation": read_table(inputs["validation"], "control_validation")}


def read_patches(inputs: Mapping[str, Path]) -> dict:
    return {"tables": {pair: read_patching(path) for pair, path in keyed(inputs, "patching", PAIR).items()}}
