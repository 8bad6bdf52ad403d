"""Rule draw_feature_card: a card per feature (activation by residue and along each WT sequence,
output effect, the mutants it carries effect for).

Built as :mod:`esmsae.figures.style` says. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from esmsae.analyses.arrays import Activity, Attributions
from esmsae.figures.style import PathLike, note, save
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.pipeline.columns import read_table
from esmsae.pipeline.errors import InputError

CARD_MUTANTS = 12


def feature_card(row: pd.Series, activity: Activity, effect: pd.Series | None, mutants: pd.DataFrame,
                 png: PathLike, pdf: PathLike) -> Figure:
    """One feature at one layer, in four panels.

    `row` is the feature's ``feature_labels.csv`` row; `effect` its ``output_effects`` row (None when
    not measured); `mutants` the mutants whose IG attribution gives it weight (columns ``protein,
    mutant, attribution, rank, share``), largest |A_j| first.

    (a) mean activation at each amino acid over the reference positions, with precision on top;
    (b) activation along each configured protein's WT sequence; (c) output effect on the 20
    amino acids, ``log p(a) − log p'(a)`` with the feature removed; (d) the mutants it carries effect for.
    """
    j = int(row["feature"])
    fig = Figure(figsize=(13, 8.4), layout="constrained")
    (ax_aa, ax_seq), (ax_out, ax_mut) = fig.subplots(2, 2)
    counts = activity.residue_counts.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(counts > 0, activity.activation_by_residue[j] / counts, 0.0)
        precision = activity.active_by_residue[j] / max(int(activity.n_active[j]), 1)
    x = np.arange(20)
    bars = ax_aa.bar(x, mean, color=["C3" if aa == row["top_residue"] else "C0" for aa in AMINO_ACIDS])
    for bar, p in zip(bars, precision, strict=True):
        if p >= 0.05:
            ax_aa.annotate(f"{p:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                           va="bottom", fontsize="x-small")
    ax_aa.set_xticks(x, labels=list(AMINO_ACIDS))
    ax_aa.set_ylabel("mean activation at the residue")
    ax_aa.set_title("(a) activation by amino acid (numbers: share of its activations)", fontsize="medium")

    for i, (protein, z) in enumerate(activity.wt_latents.items()):
        ax_seq.plot(np.arange(1, z.shape[0] + 1), z[:, j], color=f"C{i}", label=protein, linewidth=1.2)
    if activity.wt_latents:
        ax_seq.legend(fontsize="small")
    ax_seq.set_xlabel("residue position in the WT sequence")
    ax_seq.set_ylabel("z_j")
    ax_seq.set_title("(b) activation along each WT sequence", fontsize="medium")

    if effect is not None:
        delta = effect[list(AMINO_ACIDS)].to_numpy(dtype=np.float64)
        ax_out.bar(x, delta, color=["C2" if d >= 0 else "C1" for d in delta])
        ax_out.axhline(0, color="0.3", linewidth=0.8)
        ax_out.set_title(f"(c) output effect, mean over {int(effect['n_positions'])} WT positions",
                         fontsize="medium")
    else:
        note(ax_out, "output effect not measured")
        ax_out.set_title("(c) output effect", fontsize="medium")
    ax_out.set_xticks(x, labels=list(AMINO_ACIDS))
    ax_out.set_ylabel("log p(a) − log p'(a), feature removed")

    ax_mut.axis("off")
    shown = mutants.head(CARD_MUTANTS)
    if len(shown):
        cells = [[r.protein, r.mutant, f"{int(r.rank)}", f"{r.attribution:+.3g}", f"{r.share:.0%}"]
                 for r in shown.itertuples()]
        table = ax_mut.table(cellText=cells, colLabels=["protein", "mutant", "rank", "A_j", "share of D"],
                             loc="upper center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.2)
    else:
        note(ax_mut, "no mutant's attribution at this layer gives it weight")
    ax_mut.set_title(f"(d) mutants it carries effect for ({len(mutants)}; rank by |A_j| within the mutant)",
                     fontsize="medium")
    frequency = float(row["frequency"]) if pd.notna(row["frequency"]) else float("nan")
    fig.suptitle(f"Layer {int(row['layer'])}, feature {j}: {row['label']}\n"
                 f"active at {frequency:.1%} of {activity.n_positions:,} reference positions; top residue "
                 f"{row['top_residue']} (precision {row['precision']:.2f}, recall {row['recall']:.2f}, "
                 f"F1 {row['f1']:.2f}); max activation {row['max_activation']:.3g}")
    save(fig, png, pdf)
    return fig


def draw_feature_card(layer: int, feature: int, labels_table: str | Path, activity: str | Path,
                      effects: str | Path, ig: Mapping[str, Path], png: str | Path, pdf: str | Path) -> None:
    """Rule draw_feature_card: one feature's card (see esmsae.figures.cards.feature_card)."""
    table = read_table(labels_table, "feature_labels")
    row = table[(table["layer"] == layer) & (table["feature"] == feature)]
    if row.empty:
        raise InputError(f"{labels_table}: no feature {feature} at layer {layer}")
    measured = read_table(effects, "output_effects")
    effect = measured[measured["feature"] == feature]
    mutants = []
    for protein, path in ig.items():
        result = Attributions.read(path)
        for m, name in enumerate(result.mutant.tolist()):
            a = result.attribution[m]
            if a[feature] == 0:
                continue
            denominator = np.abs(a[result.abs_delta[m] > 0]).sum() + abs(result.error_attribution[m])
            rank = int(np.sum(np.abs(a) > abs(a[feature]))) + 1
            mutants.append({"protein": protein, "mutant": name, "attribution": float(a[feature]), "rank": rank,
                            "share": abs(float(a[feature])) / denominator if denominator > 0 else np.nan})
    mutants = pd.DataFrame(mutants, columns=["protein", "mutant", "attribution", "rank", "share"])
    mutants = mutants.sort_values("attribution", key=np.abs, ascending=False, kind="mergesort")
    feature_card(row.iloc[0], Activity.read(activity), effect.iloc[0] if len(effect) else None,
                 mutants, png, pdf)
