"""Figure of the spread over positions: where along the sequence a mutant's effect sits.

Built as :mod:`esmsae.figures.style` says. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from esmsae.figures.style import PathLike, layer_axis, mean_sem_line, note, save
from esmsae.pipeline.columns import read_table
from esmsae.pipeline.keys import PAIR, keyed

Keyed = Mapping[tuple[str, int], pd.DataFrame]


def position_spread(positions: Keyed, summaries: Keyed, png: PathLike, pdf: PathLike) -> Figure:
    """Where the mutant's representation change matters: one heatmap per protein, and the site share.

    Each protein's panel: mean |P_p| over its mutants, positions (tokens; 0 is BOS) across, layers
    down, the mutated positions marked with ▼. The last panel: the site share
    ``Σ_sites P_site / P_all`` by layer, mean ± s.e.m. over mutants, one line per protein.
    """
    proteins = list(dict.fromkeys(p for p, _ in positions))
    fig = Figure(figsize=(12, 2.4 * len(proteins) + 3.2), layout="constrained")
    axes = fig.subplots(len(proteins) + 1, 1, squeeze=False)[:, 0]
    for ax, protein in zip(axes, proteins, strict=False):
        layers = sorted(layer for p, layer in positions if p == protein)
        tables = [positions[(protein, layer)] for layer in layers]
        width = max((int(t["position"].max()) + 1 for t in tables if len(t)), default=0)
        matrix = np.full((len(layers), width), np.nan)
        for row, table in enumerate(tables):
            mean = table.assign(a=table["effect"].abs()).groupby("position")["a"].mean()
            matrix[row, mean.index.to_numpy(dtype=int)] = mean.to_numpy()
        if width:
            image = ax.imshow(matrix, aspect="auto", cmap="magma", interpolation="nearest")
            fig.colorbar(image, ax=ax, label="mean |P_p|", pad=0.01)
            sites = sorted({int(p) for t in tables for m in t["mutant"].unique() for p in _sites(m)})
            ax.scatter(sites, [-0.5] * len(sites), marker="v", color="C0", s=24, clip_on=False,
                       label="mutated positions")
            ax.set_ylim(len(layers) - 0.5, -0.5)  # the image's own extent; the marks sit on its top edge
            ax.set_yticks(np.arange(len(layers)), labels=[str(layer) for layer in layers])
        else:
            note(ax, "no positions")
        ax.set_title(f"{protein}: where the mutant's layer-ℓ change moves the score", fontsize="medium", loc="left")
        ax.set_ylabel("layer")
        ax.set_xlabel("token position (0 = BOS; residue i is token i)")
    ax = axes[-1]
    for i, protein in enumerate(proteins):
        layers = sorted(layer for p, layer in summaries if p == protein)
        mean_sem_line(ax, layers, [summaries[(protein, layer)]["site_share"] for layer in layers], color=f"C{i}",
                      label=protein)
    if not proteins:
        note(ax, "no positions")
    ax.axhline(1, color="0.6", linewidth=0.8, linestyle=":")
    ax.set_title("site share Σ_sites P_site / P_all (mean ± s.e.m. over mutants)", fontsize="medium", loc="left")
    layer_axis(ax)
    if proteins:
        ax.legend(fontsize="small")
    save(fig, png, pdf)
    return fig


def _sites(mutant: str) -> list[int]:
    return [int(site[1:-1]) for site in mutant.split(":")]


def read_positions(inputs: Mapping[str, Path]) -> dict:
    return {"positions": {key: read_table(path, "positions") for key, path in keyed(inputs, "positions", PAIR).items()},
            "summaries": {key: read_table(path, "positions_summary")
                          for key, path in keyed(inputs, "summary", PAIR).items()}}
