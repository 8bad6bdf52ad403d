"""Figures of the IG attributions: concentration beside its null, and the universal features.

Built as :mod:`esmsae.figures.style` says. Inputs: IG results per (protein, layer)
(:class:`~esmsae.analyses.arrays.Attributions`) and the labels table. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from esmsae.analyses.arrays import Attributions
from esmsae.figures.style import PathLike, layer_axis, mean_sem_line, note, save
from esmsae.pipeline.columns import read_table
from esmsae.pipeline.keys import PAIR, keyed
from esmsae.tables.ig import (
    TOP_N,
    Results,
    concentration_by_mutant,
    feature_consistency,
    ordered_results,
)
from esmsae.tables.labels import Labels, label_lookup

MAX_ROWS = 30


def ig_concentration(results: Results, png: PathLike, pdf: PathLike) -> Figure:
    """Concentration of IG attribution beside its null, by layer: is IG more concentrated than sparsity alone?

    Three panels over layers, every mutant of every protein pooled (mean ± s.e.m. over mutants,
    see ``esmsae.tables.ig.mutant_concentration``): the Gini of ``|A_j|`` over the changed
    set against the Gini of ``|Δ|`` (the null); ``k90`` against the null's, with ``|C|`` for
    scale; the top-20 share (error node in the denominator) against the null's, and the error
    node's share. Solid lines are the attribution, dashed the null; each panel holds one
    ``Line2D`` per curve, labelled.
    """
    table = concentration_by_mutant(results)
    layers = sorted(set(table["layer"].tolist()))
    fig = Figure(figsize=(13.5, 4.2), layout="constrained")
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    panels = [
        ("Gini over the changed set\n(% of mutants above their own null)",
         [("gini", "IG |A|", "C0", "-"), ("gini_null", "null |Δ|", "C0", "--")]),
        ("k90: features for 90 % of Σ|A|", [("k90", "IG |A|", "C1", "-"), ("k90_null", "null |Δ|", "C1", "--"),
                                              ("n_changed", "|C| changed", "0.5", ":")]),
        ("share of D = Σ|A| + |A_err|", [("top20_share", "top-20 share", "C2", "-"),
                                           ("top20_share_null", "top-20 share, null", "C2", "--"),
                                          ("error_share", "error node", "C3", "-")]),
    ]
    means: dict[str, np.ndarray] = {}
    for ax, (title, curves) in zip(axes, panels, strict=True):
        for column, label, color, style in curves:
            means[column] = mean_sem_line(ax, layers, [table.loc[table["layer"] == layer, column] for layer in layers],
                                          color=color, label=label, linestyle=style)
        if not layers:
            note(ax, "no IG attributions")
        ax.set_title(title, fontsize="medium")
        layer_axis(ax)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small", loc="center right" if ax is axes[2] else "lower left")
    axes[0].set_ylim(0, 1.05)
    axes[2].set_ylim(0, 1.05)
    for i, layer in enumerate(layers):
        at = table.loc[table["layer"] == layer]
        diff = (at["gini"] - at["gini_null"]).to_numpy(dtype=np.float64)
        diff = diff[np.isfinite(diff)]  # as the table's gini_above_null: mutants with both Ginis
        if not diff.size:
            continue
        share = float((diff > 0).mean())
        axes[0].annotate(f"{share:.0%}", (layer, means["gini"][i]), textcoords="offset points", xytext=(0, 8),
                         ha="center", fontsize="small", color="C0")
    n_mutants = table.groupby("layer").size()
    fig.suptitle("IG attribution against the SAE's sparsity alone (mean ± s.e.m. over mutants; "
                 f"{', '.join(f'{n} at layer {layer}' for layer, n in n_mutants.items())})")
    save(fig, png, pdf)
    return fig


def universal_features(results: Results, png: PathLike, pdf: PathLike, n: int = TOP_N,
                       labels: Labels | None = None) -> Figure:
    """Heatmap, features × proteins, of the fraction of each protein's mutants with the feature in its top-n.

    Drawn at the peak layer: the layer with the largest mean Σ_j |A_j| over all mutants of all
    proteins (ties: the lower layer). Columns are the proteins with results at that layer (input
    order); rows are the features with the largest mean fraction over those proteins (at most
    30, ties by feature index; a protein without mutants counts as NaN and is skipped in the
    mean and shown blank). One ``AxesImage`` of shape (rows, proteins) and a colorbar; each row is
    named by its feature number and, when `labels` (``{(layer, feature): label}``) has it, its label.
    """
    entries = ordered_results(results)
    sums: dict[int, list[np.ndarray]] = {}
    for _, layer, result in entries:
        sums.setdefault(layer, []).append(np.abs(result.attribution).sum(axis=1))
    means = {layer: np.concatenate(parts).mean() for layer, parts in sums.items() if sum(p.size for p in parts)}
    fig = Figure(figsize=(8.8, 7.2), layout="constrained")
    ax = fig.add_subplot()
    peak = max(sorted(means), key=lambda layer: means[layer]) if means else None
    matrix = np.zeros((0, 0))
    if peak is not None:
        at_peak = {protein: result for protein, layer, result in entries if layer == peak}
        proteins = list(at_peak)
        table = feature_consistency(at_peak, n)
        wide = table.pivot(index="feature", columns="protein", values="fraction").reindex(columns=proteins)
        wide = wide.fillna(0.0)
        for protein, result in at_peak.items():
            if result.n == 0:
                wide[protein] = np.nan
        if len(wide):
            score = wide.mean(axis=1, skipna=True).to_numpy()
            order = np.lexsort((wide.index.to_numpy(), -score))[:MAX_ROWS]
            wide = wide.iloc[order]
            matrix = wide.to_numpy(dtype=np.float64)
    if matrix.size:
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(np.arange(len(proteins)), labels=proteins, rotation=45, ha="right")
        ax.set_yticks(np.arange(len(wide)), labels=[
            f"{f}  {(labels or {}).get((peak, int(f)), '')}".rstrip() for f in wide.index], fontsize="small")
        fig.colorbar(image, ax=ax, label=f"fraction of mutants with the feature in their top-{n}")
        ax.set_xlabel("protein")
        ax.set_ylabel("SAE feature")
        ax.set_title(f"Top-{n} features shared across proteins, layer {peak}")
    else:
        note(ax, "no IG attributions")
        ax.set_title("Top features shared across proteins")
    save(fig, png, pdf)
    return fig


def read_attributions(inputs: Mapping[str, Path]) -> dict:
    return {"results": {pair: Attributions.read(path) for pair, path in keyed(inputs, "ig", PAIR).items()}}


def read_attributions_labelled(inputs: Mapping[str, Path]) -> dict:
    return read_attributions(inputs) | {"labels": label_lookup(read_table(inputs["labels"], "feature_labels"))}
