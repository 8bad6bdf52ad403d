"""Figures of the minimal circuits: the faithfulness curves and the circuit sizes.

Built as :mod:`esmsae.figures.style` says. Inputs: circuit curves per (protein, layer)
(``TABLES["circuit_curves"]``) and ``tables/circuit_sizes.csv``. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esmsae.figures.style import PathLike, note, save
from esmsae.pipeline.columns import SIZE_COLUMNS, read_table
from esmsae.pipeline.keys import PAIR, keyed
from esmsae.tables.circuits import negligible


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


def read_curves(inputs: Mapping[str, Path]) -> dict:
    curves = keyed(inputs, "curves", PAIR)
    return {"curves": {pair: read_table(path, "circuit_curves") for pair, path in curves.items()}}


def read_sizes(inputs: Mapping[str, Path]) -> dict:
    return {"sizes": read_table(inputs["sizes"], "circuit_sizes_labelled")}
