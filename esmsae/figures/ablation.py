"""Figure of feature-set ablation against the assay: each set's effect by layer, beside its frequency-matched nulls.

Built as :mod:`esmsae.figures.style` says. Inputs: ``tables/set_ablation.csv`` and the SAE's task
fidelity (``tables/sae_task_fidelity.csv``) for the reconstruction's line. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from esmsae.config.settings import ABLATION_SETS
from esmsae.figures.style import PathLike, grid, layer_axis, note, save
from esmsae.pipeline.columns import read_table

COLORS = {name: f"C{i}" for i, name in enumerate(ABLATION_SETS)}
RECONSTRUCTION = "whole stream replaced by the SAE's reconstruction"


def read_set_ablation(inputs: Mapping[str, Path]) -> dict:
    return {"table": read_table(inputs["table"], "set_ablation"),
            "task": read_table(inputs["task"], "sae_task_fidelity")}


def set_ablation(table: pd.DataFrame, task: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """One panel per protein: Δρ with DMS (or, without DMS scores, ρ(clean, ablated)) by layer for each set,
    the 5–95 % band of its frequency-matched nulls behind it in the same colour, and as a black line what
    replacing the whole residual stream by the SAE's reconstruction does (the study's forward): the most any
    set of features could be said to carry. Markers: filled, empirical p < 0.05 against the nulls; open, not;
    a cross, no null drawn (``n_null`` 0: the set is too large for its frequency deciles), so no band and no
    p. The sets' sizes (median |A| over layers) are under each panel's title; one legend for the figure."""
    proteins = list(dict.fromkeys(table["protein"].tolist()))
    rows, cols = grid(max(1, len(proteins)), max_cols=3)
    fig = Figure(figsize=(max(4.6 * cols, 7.0), 3.8 * rows + 0.6), layout="constrained")  # the legend's width
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    handles: dict[str, Line2D] = {}
    for ax, protein in zip(axes, proteins or [None], strict=False):
        if protein is None:
            note(ax, "no sets ablated")
            continue
        part = table[table["protein"] == protein]
        with_dms = bool((part["n_dms"] >= 3).any())
        column, p_column = ("delta_rho", "p_delta_rho") if with_dms else ("rho_clean_ablated", "p_rho_clean_ablated")
        sizes = []
        for name, rows_of in part.groupby("set", sort=False):
            rows_of = rows_of.sort_values("layer", kind="mergesort")
            layers = rows_of["layer"].to_numpy(dtype=np.int64)
            color = COLORS.get(name, "0.3")
            ax.fill_between(layers, rows_of[f"null_{column}_p05"], rows_of[f"null_{column}_p95"], color=color,
                            alpha=0.15, linewidth=0)
            values = rows_of[column].to_numpy(dtype=np.float64)
            (line,) = ax.plot(layers, values, color=color, label=name)
            handles.setdefault(name, line)
            no_null = (rows_of["n_null"] == 0).to_numpy()
            significant = (rows_of[p_column] < 0.05).to_numpy() & ~no_null
            kinds = (("open", ~no_null & ~significant, dict(marker="o", facecolors="white", edgecolors=color)),
                     ("significant", significant, dict(marker="o", color=color)),
                     ("no_null", no_null, dict(marker="x", color=color)))
            for gid, where, style in kinds:
                ax.scatter(layers[where], values[where], zorder=3, gid=gid, **style)
            sizes.append(f"{name} {int(rows_of['size'].median())}")
        ceiling = task[(task["protein"] == protein) & task["study_forward"].astype(bool)].sort_values("layer")
        if len(ceiling):
            line = (ceiling["spearman_dms_recon"] - ceiling["spearman_dms_clean"]) if with_dms \
                else ceiling["spearman_clean_recon"]
            (drawn,) = ax.plot(ceiling["layer"], line, color="black", linestyle="--", linewidth=1,
                               label=RECONSTRUCTION)
            handles.setdefault(RECONSTRUCTION, drawn)
        ax.axhline(0.0 if with_dms else 1.0, color="0.6", linewidth=0.8)
        layer_axis(ax)
        ax.set_ylabel("Δρ with DMS (ablated − clean)" if with_dms else "ρ(clean, ablated scores)")
        ax.set_title(f"{protein}\n|A|: {', '.join(sizes)}", fontsize=9)
    for ax in axes[len(proteins or [None]):]:
        ax.set_visible(False)
    markers = [Line2D([], [], color="0.3", marker="o", linestyle="", label="p < 0.05 against the nulls"),
               Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="", label="p ≥ 0.05"),
               Line2D([], [], color="0.3", marker="x", linestyle="", label="no null (set too large for its deciles)")]
    legend = [*handles.values(), *markers] if proteins else []
    if legend:
        fig.legend(handles=legend, loc="outside lower center", ncol=min(2 * cols, len(legend)), fontsize=8,
                   frameon=False)
    fig.suptitle("Feature-set ablation against the assay" + ("\n" if cols == 1 else " ")
                 + "(bands: 5–95 % of frequency-matched random sets)")
    save(fig, png, pdf)
    return fig
