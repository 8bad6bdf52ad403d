"""Figures of the IG attributions and minimal circuits, each written as a PNG and a PDF.

Built like ``esmsae.figures``: ``matplotlib.figure.Figure`` objects without ``pyplot``, saved
with ``esmsae.figures.save`` (atomic, no timestamps, so reruns write the same bytes). Every
function returns its ``Figure``; empty inputs give a panel with a note instead of an error.

Inputs: IG results per (protein, layer) as in ``esmsae.attribution_tables``, circuit curves per
(protein, layer) (``esmsae.circuits.CURVE_COLUMNS``) and the circuit-size table of
``esmsae.attribution_tables.circuit_sizes``. Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esmsae.attribution_tables import TOP_N, Results, feature_consistency, ordered_results
from esmsae.columns import SIZE_COLUMNS
from esmsae.figures import save

PathLike = str | os.PathLike
MAX_FEATURES = 100
MAX_ROWS = 30


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def ig_concentration(results: Results, png: PathLike, pdf: PathLike) -> Figure:
    """Cumulative share of Σ|A| carried by the top-x features, median over all mutants of all proteins, per layer.

    x runs from 1 to min(100, d_sae) on a log axis. One ``Line2D`` per layer that has at least
    one mutant with Σ|A| > 0, labelled ``layer <ℓ>``; mutants with Σ|A| = 0 are left out.
    """
    entries = ordered_results(results)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, layer in enumerate(sorted({layer for _, layer, _ in entries})):
        blocks = [result.attribution for _, result_layer, result in entries if result_layer == layer]
        width = min(MAX_FEATURES, *(block.shape[1] for block in blocks))
        curves = []
        for block in blocks:
            a = -np.sort(-np.abs(block), axis=1)
            total = a.sum(axis=1)
            keep = total > 0
            if width and keep.any():
                curves.append(np.cumsum(a[keep], axis=1)[:, :width] / total[keep, None])
        if not curves:
            continue
        median = np.median(np.concatenate(curves), axis=0)
        ax.plot(np.arange(1, width + 1), median, color=f"C{i}", label=f"layer {layer}")
        drawn += 1
    if drawn:
        ax.set_xscale("log")
        ax.legend(title="median over mutants", fontsize="small")
    else:
        _note(ax, "no IG attributions")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of top features (by |A|)")
    ax.set_ylabel("share of Σ|A|")
    ax.set_title("Concentration of IG attributions")
    save(fig, png, pdf)
    return fig


def circuit_faithfulness(curves: Mapping[tuple[str, int], pd.DataFrame], png: PathLike, pdf: PathLike,
                         recover: float = 0.9) -> Figure:
    """Median recovered fraction against k, pooled over proteins, one line per layer; dashed line at `recover`.

    NaN fractions (mutants with zero total effect) are ignored. One ``Line2D`` per layer with
    curve rows (labelled ``layer <ℓ>``), plus the horizontal dashed ``recover`` line.
    """
    by_layer: dict[int, list[pd.DataFrame]] = {}
    for (protein, layer), table in curves.items():
        missing = [c for c in ("mutant", "k", "recovered_fraction") if c not in table.columns]
        if missing:
            raise ValueError(f"circuit curves ({protein!r}, layer {layer}): missing columns {missing}")
        if len(table):
            by_layer.setdefault(int(layer), []).append(table[["k", "recovered_fraction"]])
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, layer in enumerate(sorted(by_layer)):
        pooled = pd.concat(by_layer[layer], ignore_index=True).astype({"k": "int64", "recovered_fraction": "float64"})
        median = pooled.dropna().groupby("k", sort=True)["recovered_fraction"].median()
        median = median.reindex(np.unique(pooled["k"].to_numpy()))
        ax.plot(median.index.to_numpy(), median.to_numpy(), color=f"C{i}", marker=".", label=f"layer {layer}")
    ax.axhline(recover, color="0.3", linestyle="--", linewidth=1, label=f"recover = {recover:g}")
    if not by_layer:
        _note(ax, "no circuit curves")
    ax.legend(fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("k (top-|A| features patched)")
    ax.set_ylabel("median recovered fraction")
    ax.set_title("Faithfulness of top-k circuits")
    save(fig, png, pdf)
    return fig


def universal_features(results: Results, png: PathLike, pdf: PathLike, n: int = TOP_N) -> Figure:
    """Heatmap, features × proteins, of the fraction of each protein's mutants with the feature in its top-n.

    Drawn at the peak layer: the layer with the largest mean Σ_j |A_j| over all mutants of all
    proteins (ties: the lower layer). Columns are the proteins with results at that layer (input
    order); rows are the features with the largest mean fraction over those proteins (at most
    30, ties by feature index; a protein without mutants counts as NaN and is skipped in the
    mean and shown blank). One ``AxesImage`` of shape (rows, proteins) and a colorbar.
    """
    entries = ordered_results(results)
    sums: dict[int, list[np.ndarray]] = {}
    for _, layer, result in entries:
        sums.setdefault(layer, []).append(np.abs(result.attribution).sum(axis=1))
    means = {layer: np.concatenate(parts).mean() for layer, parts in sums.items() if sum(p.size for p in parts)}
    fig = Figure(figsize=(6.4, 6.4), layout="constrained")
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
        ax.set_yticks(np.arange(len(wide)), labels=[str(f) for f in wide.index])
        fig.colorbar(image, ax=ax, label=f"fraction of mutants with the feature in their top-{n}")
        ax.set_xlabel("protein")
        ax.set_ylabel("SAE feature")
        ax.set_title(f"Top-{n} features shared across proteins, layer {peak}")
    else:
        _note(ax, "no IG attributions")
        ax.set_title("Top features shared across proteins")
    save(fig, png, pdf)
    return fig


def minimal_circuit_sizes(sizes: pd.DataFrame, png: PathLike, pdf: PathLike, max_k: int) -> Figure:
    """Box plot of the minimal circuit size per layer (proteins pooled), with points overlaid.

    Above each box: ``none: c/n``, the mutants without a circuit within `max_k` out of all
    mutants at that layer. Sizes above `max_k` or below 0 raise ``ValueError`` naming the
    (protein, layer).
    """
    if isinstance(max_k, bool) or not isinstance(max_k, (int, np.integer)) or max_k < 0:
        raise ValueError(f"max_k must be a non-negative integer, got {max_k!r}")
    missing = [c for c in SIZE_COLUMNS if c not in sizes.columns]
    if missing:
        raise ValueError(f"circuit sizes: missing columns {missing}")
    k = pd.array(sizes["minimal_k"], dtype="Int64")
    bad = ((k > max_k) | (k < 0)).fillna(False).to_numpy(dtype=bool)
    if bad.any():
        row = sizes.loc[bad].iloc[0]
        raise ValueError(f"circuit sizes ({row['protein']!r}, layer {row['layer']}): minimal_k "
                         f"{row['minimal_k']} outside 0..{max_k}")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
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
            total = int((layer_values == layer).sum())
            ax.text(x, max_k + 0.5, f"none: {total - values.size}/{total}", ha="center", va="bottom",
                    fontsize="small")
        ax.set_xticks(positions, labels=[str(layer) for layer in layers])
        ax.set_ylim(-0.5, max_k + 2)
    else:
        _note(ax, "no circuit sizes")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"minimal circuit size k (≤ {max_k})")
    ax.set_title("Minimal circuit sizes")
    save(fig, png, pdf)
    return fig
