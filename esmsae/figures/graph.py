"""Figures of the cross-layer feature graphs: the strongest paths per protein, the mediated fraction.

Built as :mod:`esmsae.figures.style` says. Nothing here imports torch.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from esmsae.figures.style import PathLike, note, save
from esmsae.pipeline.columns import read_table
from esmsae.pipeline.keys import PAIR, keyed
from esmsae.tables.graph import mediated_fractions, strongest_paths
from esmsae.tables.statistics import mean_sem


def feature_graph(aggregate: pd.DataFrame, layers: list[int], png: PathLike, pdf: PathLike, protein: str = "",
                  paths: int = 8, per_pair: int = 8) -> Figure:
    """A protein's strongest paths: layers as columns, the `paths` strongest paths from the first graph
    layer to the last (:func:`esmsae.tables.graph.strongest_paths`: a path is as strong as its weakest
    edge's Σ|M| over mutants), nodes named by feature and label, edge width by mean |M| (red: M > 0,
    blue: M < 0), the number of mutants with the edge on it. Where no path spans every layer, each layer
    pair's `per_pair` most recurrent edges instead, and the title says so. `aggregate` is
    ``graph/{protein}_aggregate.csv``."""
    found = strongest_paths(aggregate, layers, paths)
    rank: dict[tuple[int, int], float] = {}  # a node's height: the best path through it (upstream, fallback)
    if found:
        steps = {(a, b) for _, path in found for a, b in zip(path, path[1:], strict=False)}
        keys = list(zip(aggregate["layer_up"].astype(int), aggregate["up"].astype(int),
                        aggregate["layer_down"].astype(int), aggregate["down"].astype(int), strict=True))
        edges = aggregate[[((lu, u), (ld, d)) in steps for lu, u, ld, d in keys]]
        for i, (_, path) in enumerate(found):
            for node in path:
                rank.setdefault(node, i)
        title = (f"{protein}: the {len(found)} strongest paths from layer {min(layers)} to {max(layers)} "
                 "(a path is as strong as its weakest edge's Σ|M| over mutants)")
    else:
        edges = aggregate.sort_values(["n_mutants", "mean_abs_mediated"], ascending=False, kind="mergesort")
        edges = edges.groupby("layer_up", sort=True).head(per_pair)
        title = (f"{protein}: no path spans every layer; per layer pair, the {per_pair} edges most recurrent "
                 "across mutants (then by mean |M|)")
    column = {layer: i for i, layer in enumerate(sorted(layers))}
    nodes: dict[int, dict[int, str]] = {layer: {} for layer in column}
    for r in edges.itertuples():
        for layer, feature, label in ((r.layer_up, r.up, r.up_label), (r.layer_down, r.down, r.down_label)):
            nodes.setdefault(int(layer), {})[int(feature)] = label if isinstance(label, str) else ""
    tallest = max((len(members) for members in nodes.values()), default=0)  # room for each three-line name
    fig = Figure(figsize=(4.2 * max(len(layers), 2), max(7.0, 0.8 * tallest + 2.0)), layout="constrained")
    ax = fig.add_subplot()
    ax.axis("off")
    place: dict[tuple[int, int], tuple[float, float]] = {}
    for layer in sorted(nodes):  # each column by path rank, else by its upstream neighbours' heights
        def height(feature: int, layer: int = layer) -> float:
            if (layer, feature) in rank:
                return rank[(layer, feature)]
            above = [place[(int(r.layer_up), int(r.up))][1] for r in edges.itertuples()
                     if (int(r.layer_down), int(r.down)) == (layer, feature) and (int(r.layer_up), int(r.up)) in place]
            return -float(np.mean(above)) if above else 0.0

        members = sorted(nodes[layer], key=height)
        place.update({(layer, f): (column.get(layer, 0), 1 - (i + 0.5) / len(members)) for i, f in enumerate(members)})
    widest = float(edges["mean_abs_mediated"].max()) if len(edges) else 1.0
    box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
    for r in edges.itertuples():
        (x1, y1), (x2, y2) = place[(int(r.layer_up), int(r.up))], place[(int(r.layer_down), int(r.down))]
        width = 0.8 + 7 * float(r.mean_abs_mediated) / widest if widest > 0 else 1
        ax.plot([x1, x2], [y1, y2], color="C3" if r.mean_mediated > 0 else "C0", linewidth=width, alpha=0.55,
                solid_capstyle="round", zorder=1)
        ax.text(x1 + 0.62 * (x2 - x1), y1 + 0.62 * (y2 - y1), f"{int(r.n_mutants)}", fontsize="small",
                color="0.25", ha="center", va="center", bbox=box, zorder=2)
    for (layer, feature), (x, y) in place.items():
        ax.scatter([x], [y], s=70, color="0.15", zorder=3)
        label = "\n".join(textwrap.fill(part, 30) for part in nodes[layer][feature].split("; ") if part)
        ax.text(x, y - 0.025, f"L{layer} F{feature}" + (f"\n{label}" if label else ""), fontsize="small",
                ha="center", va="top", bbox=box, zorder=4)
    for layer, x in column.items():
        ax.text(x, 1.04, f"layer {layer}", ha="center", fontsize="large", fontweight="bold")
    if not len(edges):
        note(ax, "no measured edges")
    ax.set_xlim(-0.35, max(len(column) - 1, 1) + 0.35)
    ax.set_ylim(-0.06, 1.08)
    ax.legend(handles=[Line2D([], [], color="C3", linewidth=4, alpha=0.55, label="M > 0"),
                       Line2D([], [], color="C0", linewidth=4, alpha=0.55, label="M < 0")],
              loc="lower center", bbox_to_anchor=(0.5, -0.06), ncol=2, frameon=False,
              title="width: mean |M| over the mutants with the edge; number on an edge: how many mutants have it")
    fig.suptitle(title)
    save(fig, png, pdf)
    return fig


def mediated_fraction(fractions: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """Per layer pair, each mutant's mediated fraction beside its null, one panel per protein.

    `fractions` has ``protein, layer_up, layer_down, mutant, mediated_fraction, null_fraction``
    (:func:`esmsae.tables.graph.mediated_fractions` of every graph job's shares). A thin line joins a
    mutant's null (hollow, left) to its fraction (filled, right); the bars are the means ± s.e.m. over
    mutants. The top downstream features carry the effect only where the fractions clear the nulls.
    """
    proteins = list(dict.fromkeys(fractions["protein"])) or [""]
    pairs = sorted({(int(u), int(d)) for u, d in zip(fractions["layer_up"], fractions["layer_down"], strict=True)})
    fig = Figure(figsize=(max(4.5, 1.6 * len(pairs) + 1.5) * len(proteins), 4.2), layout="constrained")
    axes = fig.subplots(1, len(proteins), sharey=True, squeeze=False)[0]
    for ax, protein in zip(axes, proteins, strict=True):
        part = fractions[fractions["protein"] == protein]
        for x, (up, down) in enumerate(pairs):
            one = part[(part["layer_up"] == up) & (part["layer_down"] == down)]
            real, null = one["mediated_fraction"].to_numpy(float), one["null_fraction"].to_numpy(float)
            for r, n in zip(real, null, strict=True):
                ax.plot([x - 0.15, x + 0.15], [n, r], color="0.7", linewidth=0.8, zorder=1)
            ax.scatter(np.full(len(null), x - 0.15), null, facecolors="none", edgecolors="0.35", s=22, zorder=2)
            ax.scatter(np.full(len(real), x + 0.15), real, color="C3", s=22, zorder=2)
            for offset, values, color in ((-0.3, null, "0.35"), (0.3, real, "C3")):
                mean, sem = mean_sem(values)
                ax.errorbar([x + offset], [mean], yerr=[sem], fmt="_", color=color, markersize=14, capsize=3)
        ax.set_xticks(range(len(pairs)), [f"{u} → {d}" for u, d in pairs])
        ax.set_xlabel("layer pair")
        ax.set_title(protein)
        ax.axhline(0, color="0.85", linewidth=0.8, zorder=0)
        if not len(part):
            note(ax, "no mediated shares")
    axes[0].set_ylabel("mediated fraction of the upstream effects")
    axes[-1].legend(handles=[Line2D([], [], marker="o", color="C3", linestyle="", label="top downstream held"),
                             Line2D([], [], marker="o", markerfacecolor="none", color="0.35", linestyle="",
                                    label="null: as many, at random")], loc="best", fontsize="small")
    fig.suptitle("How much of the upstream features' effects their top downstream features carry (one line per mutant)")
    save(fig, png, pdf)
    return fig


def read_graph(inputs: Mapping[str, Path]) -> dict:
    return {"aggregate": read_table(inputs["aggregate"], "graph_aggregate")}


def read_mediation(inputs: Mapping[str, Path]) -> dict:
    parts = [mediated_fractions(read_table(path, "graph_shares")).assign(protein=protein)
             for (protein, _), path in keyed(inputs, "shares", PAIR).items()]
    columns = ["protein", "layer_up", "layer_down", "mutant", "mediated_fraction", "null_fraction"]
    return {"fractions": pd.concat(parts, ignore_index=True).reindex(columns=columns) if parts
            else pd.DataFrame(columns=columns)}
