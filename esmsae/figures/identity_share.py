"""Figure of the identity share: how much of the attribution identity features carry, by layer.

Built as :mod:`esmsae.figures.style` says. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from esmsae.figures.style import PathLike, layer_axis, mean_sem_line, note, save
from esmsae.pipeline.columns import read_table


def identity_share(table: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """How much attribution the residue-identity features carry, by layer, beside the null.

    Two panels (identity features of the WT residue; of the mutant residue), one colour per protein:
    solid the share of IG attribution (``D``), dashed the share of the latent change ``|Δ|`` (the
    null), mean ± s.e.m. over mutants. `table` is ``identity_share_mutants.csv``.
    """
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    proteins = list(dict.fromkeys(table["protein"])) if len(table) else []
    for ax, side, title in ((axes[0], "wt", "identity features of the WT residue"),
                            (axes[1], "mut", "identity features of the mutant residue")):
        for i, protein in enumerate(proteins):
            rows = table[table["protein"] == protein]
            layers = sorted(set(rows["layer"].tolist()))
            for column, style, suffix in ((f"{side}_identity_share", "-", ""),
                                          (f"{side}_identity_share_null", "--", " null")):
                mean_sem_line(ax, layers, [rows.loc[rows["layer"] == layer, column] for layer in layers],
                              color=f"C{i}", label=f"{protein}{suffix}", linestyle=style,
                              marker="o" if not suffix else None)
        if not proteins:
            note(ax, "no identity shares")
        ax.set_title(title, fontsize="medium")
        layer_axis(ax)
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("share (solid: of IG attribution D; dashed: of |Δ|)")
    if proteins:
        axes[1].legend(fontsize="small")
    fig.suptitle("How much of each mutant's effect is 'the residue changed' (mean ± s.e.m. over mutants)")
    save(fig, png, pdf)
    return fig


def read_identity_share(inputs: Mapping[str, Path]) -> dict:
    return {"table": read_table(inputs["mutants"], "identity_share_mutants")}
