"""Figure of the attribution agreement: how well AtP and IG rank features against exact patching.

Built as :mod:`esmsae.figures.style` says. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from esmsae.figures.style import PathLike, layer_axis, mean_sem_line, note, save
from esmsae.pipeline.columns import read_table


def attribution_agreement(table: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """Spearman ρ and top-10 overlap of AtP (solid) and IG (dashed) against exact patching, by layer.

    `table` is ``attribution_agreement_mutants.csv``; one colour per protein, mean ± s.e.m. over
    mutants. Two ``Line2D`` per protein and panel, and in the overlap panel the chance level
    (dotted): two random top-10s of the changed set share ``min(10, |C|) / |C|`` on average.
    """
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    proteins = list(dict.fromkeys(table["protein"])) if len(table) else []
    for ax, stat, title in ((axes[0], "spearman", "Spearman ρ with exact single-feature effects"),
                            (axes[1], "top10", "top-10 overlap with exact patching")):
        for i, protein in enumerate(proteins):
            rows = table[table["protein"] == protein]
            layers = sorted(set(rows["layer"].tolist()))
            for method, style in (("atp", "-"), ("ig", "--")):
                mean_sem_line(ax, layers, [rows.loc[rows["layer"] == layer, f"{stat}_{method}"] for layer in layers],
                              color=f"C{i}", label=f"{protein} {'AtP' if method == 'atp' else 'IG'}",
                              linestyle=style)
        if stat == "top10" and proteins:
            chance = table.groupby("layer")["top10_chance"].mean()
            ax.plot(chance.index.to_numpy(), chance.to_numpy(), color="0.5", linestyle=":", label="chance")
        if not proteins:
            note(ax, "no layer has both patching and IG")
        ax.set_title(title, fontsize="medium")
        layer_axis(ax)
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].axhline(0, color="0.6", linewidth=0.8)
    axes[1].set_ylim(0, 1.05)
    if proteins:
        axes[1].legend(fontsize="small")
    fig.suptitle("Can cheap attribution stand in for exact patching? AtP (solid) and IG (dashed), "
                 "mean ± s.e.m. over mutants")
    save(fig, png, pdf)
    return fig


def read_agreement(inputs: Mapping[str, Path]) -> dict:
    return {"table": read_table(inputs["mutants"], "agreement_mutants")}
