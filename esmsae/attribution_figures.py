"""Figures of the IG attributions and minimal circuits, each written as a PNG and a PDF.

Built like ``esmsae.figures``: ``matplotlib.figure.Figure`` objects without ``pyplot``, saved
with ``esmsae.figures.save`` (atomic, no timestamps, so reruns write the same bytes). Every
function returns its ``Figure``; empty inputs give a panel with a note instead of an error.

Inputs: IG results per (protein, layer) as in ``esmsae.attribution_tables``, circuit curves per
(protein, layer) (``esmsae.columns.CURVE_COLUMNS``) and the circuit-size table of
``esmsae.attribution_tables.circuit_sizes``. Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esmsae.attribution_tables import (
    TOP_N,
    Results,
    concentration_by_mutant,
    feature_consistency,
    negligible,
    ordered_results,
)
from esmsae.columns import SIZE_COLUMNS
from esmsae.figures import layer_axis, mean_sem_line, note, save
from esmsae.labels import Labels

PathLike = str | os.PathLike
MAX_ROWS = 30



def ig_concentration(results: Results, png: PathLike, pdf: PathLike) -> Figure:
    """Concentration of IG attribution beside its null, by layer: is IG more concentrated than sparsity alone?

    Three panels over layers, every mutant of every protein pooled (mean ± s.e.m. over mutants,
    see ``esmsae.attribution_tables.mutant_concentration``): the Gini of ``|A_j|`` over the changed
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


def circuit_faithfulness(curves: Mapping[tuple[str, int], pd.DataFrame], png: PathLike, pdf: PathLike,
                         recover: float = 0.9, min_effect: float = 0.05) -> Figure:
    """Median sufficiency r_n (solid) and necessity c_n (dashed) against n, one colour per layer.

    Proteins are pooled; negligible mutants (|``full_effect``| < `min_effect`) are left out, and
    the legend says how many. The shaded band is ``1 ± (1 − recover)``: a circuit is minimal at the first n whose
    r_n falls inside it. Two ``Line2D`` per layer with curve rows (``layer <ℓ>`` and
    ``layer <ℓ> without``).
    """
    by_layer: dict[int, list[pd.DataFrame]] = {}
    for (protein, layer), table in curves.items():
        missing = [c for c in ("mutant", "n_features", "recovered_fraction", "complement_fraction", "full_effect")
                   if c not in table.columns]
        if missing:
            raise ValueError(f"circuit curves ({protein!r}, layer {layer}): missing columns {missing}")
        if len(table):
            by_layer.setdefault(int(layer), []).append(table)
    fig = Figure(figsize=(7.2, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.axhspan(recover, 2 - recover, color="0.9", label=f"within ±{1 - recover:.0%} of the full effect")
    for i, layer in enumerate(sorted(by_layer)):
        tables = [t.assign(negligible=negligible(t["full_effect"], min_effect)) for t in by_layer[layer]]
        n_mutants = sum(t["mutant"].nunique() for t in tables)  # per protein: names repeat across proteins
        n_negligible = sum(t.loc[t["negligible"], "mutant"].nunique() for t in tables)
        pooled = pd.concat(tables, ignore_index=True)
        kept = pooled.loc[~pooled["negligible"]]
        for column, style, suffix in (("recovered_fraction", "-", f" ({n_mutants - n_negligible} of {n_mutants}; "
                                                                    f"{n_negligible} negligible)"),
                                      ("complement_fraction", "--", " without")):
            median = kept.groupby("n_features", sort=True)[column].median()
            ax.plot(median.index.to_numpy(), median.to_numpy(), color=f"C{i}", linestyle=style,
                    marker="." if style == "-" else None, label=f"layer {layer}{suffix}")
    if not by_layer:
        note(ax, "no circuit curves")
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.legend(fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("n features (top by |A_j|)")
    ax.set_ylabel("median fraction of the full effect")
    ax.set_title("Top-n circuits: what they recover (solid), what is left without them (dashed)")
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


def minimal_circuit_sizes(sizes: pd.DataFrame, png: PathLike, pdf: PathLike, max_k: int) -> Figure:
    """Box plot of the minimal circuit size per layer (proteins pooled), with points overlaid.

    Above each box: ``none: c/n`` (no circuit within `max_k`) and ``negligible: g/n`` (full
    effect below ``min_effect``, so no size) out of all mutants at that layer. Sizes above
    `max_k` or below 0 raise ``ValueError`` naming the (protein, layer).
    """
    if isinstance(max_k, bool) or not isinstance(max_k, (int, np.integer)) or max_k < 0:
        raise ValueError(f"max_k must be a non-negative integer, got {max_k!r}")
    missing = [c for c in SIZE_COLUMNS if c not in sizes.columns]
    if missing:
        raise ValueError(f"circuit sizes: missing columns {missing}")
    k = pd.array(sizes["n_features"], dtype="Int64")
    bad = ((k > max_k) | (k < 0)).fillna(False).to_numpy(dtype=bool)
    if bad.any():
        row = sizes.loc[bad].iloc[0]
        raise ValueError(f"circuit sizes ({row['protein']!r}, layer {row['layer']}): n_features "
                         f"{row['n_features']} outside 0..{max_k}")
    negligible = sizes["negligible"].astype(str).str.lower().eq("true").to_numpy()
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    layer_values = sizes["layer"].to_numpy(dtype=np.int64)
    layers = sorted(set(layer_values.tolist()))
    found = [k[layer_values == layer].dropna().to_numpy(dtype=np.float64) for layer in layers]
    if layers:
        positions = np.arange(len(layers))
        ax.boxplot([values if values.size else [np.nan] for values in found], positions=positions,
                   widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for x, values in zip(positions, found, strict=True):
            ax.scatter(x + rng.uniform(-0.15, 0.15, values.size), values, s=10, alpha=0.5, color="C0",
                       linewidths=0)
        for x, layer, values in zip(positions, layers, found, strict=True):
            at = layer_values == layer
            total, small = int(at.sum()), int(negligible[at].sum())
            ax.text(x, max_k + 0.5, f"none: {total - small - values.size}/{total}\nnegligible: {small}/{total}",
                    ha="center", va="bottom", fontsize="small")
        ax.set_xticks(positions, labels=[str(layer) for layer in layers])
        ax.set_ylim(-0.5, max_k * 1.15 + 3)
    else:
        note(ax, "no circuit sizes")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"minimal circuit size, n features (≤ {max_k})")
    ax.set_title("Minimal circuit sizes")
    save(fig, png, pdf)
    return fig
