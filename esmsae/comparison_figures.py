"""Figures of the cheap-vs-exact agreement and of the spread over positions (no torch here).

Built like ``esmsae.figures`` (``Figure`` objects without ``pyplot``, saved atomically without
timestamps).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from esmsae.figures import layer_axis, mean_sem_line, note, save
from esmsae.graph_tables import strongest_paths
from esmsae.statistics import mean_sem

PathLike = str | os.PathLike



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


def feature_graph(aggregate: pd.DataFrame, layers: list[int], png: PathLike, pdf: PathLike, protein: str = "",
                  paths: int = 8, per_pair: int = 8) -> Figure:
    """A protein's strongest paths: layers as columns, the `paths` strongest paths from the first graph
    layer to the last (:func:`esmsae.graph_tables.strongest_paths`: a path is as strong as its weakest
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
    (:func:`esmsae.graph_tables.mediated_fractions` of every graph job's shares). A thin line joins a
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
