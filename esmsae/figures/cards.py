"""Rule draw_feature_card: a card per feature (activation by residue and along each WT sequence,
output effect, the mutants it carries effect for, its top-activating examples and their sequence logo).

Built as :mod:`esmsae.figures.style` says. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.textpath import TextPath
from matplotlib.transforms import Affine2D

from esmsae.analyses.arrays import Activity, Attributions
from esmsae.figures.style import PathLike, note, save
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.pipeline.columns import read_table
from esmsae.pipeline.errors import InputError

CARD_MUTANTS = 12
# Residue colours of the logo and the examples: hydrophobic, polar, basic, acidic, and G/P.
RESIDUE_COLORS = {**dict.fromkeys("AVLIMFWC", "0.15"), **dict.fromkeys("STYNQ", "C2"), **dict.fromkeys("KRH", "C0"),
                  **dict.fromkeys("DE", "C3"), **dict.fromkeys("GP", "C1")}


def aligned(examples: pd.DataFrame, width: int) -> list[list[tuple[str, float] | None]]:
    """Each example's window as 2·width + 1 cells aligned at its active residue: (residue, activation), or None
    beyond the sequence's ends."""
    rows = []
    for r in examples.itertuples():
        values = [float(v) for v in str(r.window_activations).split(";")] if str(r.window_activations) else []
        cells: list[tuple[str, float] | None] = []
        for offset in range(-width, width + 1):
            i = int(r.position) + offset - int(r.window_start)
            cells.append((str(r.window)[i], values[i] if i < len(values) else 0.0)
                         if 0 <= i < len(str(r.window)) else None)
        rows.append(cells)
    return rows


def logo_heights(rows: list[list[tuple[str, float] | None]]) -> list[dict[str, float]]:
    """Per aligned column, each residue's letter height in bits: its frequency times the column's information
    content ``log2(20) − (H + e(n))``, floored at 0, with the small-sample correction ``e(n) = 19 / (2 ln 2 · n)``
    for n letters (Schneider et al. 1986; without it ten random windows look informative). Columns where no
    window reaches count nothing."""
    out = []
    for column in zip(*rows, strict=True) if rows else []:
        letters = [cell[0] for cell in column if cell is not None]
        if not letters:
            out.append({})
            continue
        freq = {a: letters.count(a) / len(letters) for a in sorted(set(letters))}
        entropy = -sum(p * np.log2(p) for p in freq.values())
        information = max(0.0, np.log2(20) - entropy - 19 / (2 * np.log(2) * len(letters)))
        out.append({a: p * information for a, p in freq.items()})
    return out


def draw_letter(ax, letter: str, x: float, y: float, height: float, color: str) -> None:
    """`letter` filling the box [x − 0.45, x + 0.45] × [y, y + height] (a logo's stacked letter)."""
    path = TextPath((0, 0), letter, size=1, prop={"family": "DejaVu Sans Mono", "weight": "bold"})
    box = path.get_extents()
    scale = Affine2D().translate(-box.x0, -box.y0).scale(0.9 / max(box.width, 1e-9), height / max(box.height, 1e-9))
    ax.add_patch(PathPatch(path.transformed(scale.translate(x - 0.45, y)), color=color, linewidth=0))


def examples_panels(ax_ex, ax_logo, examples: pd.DataFrame, width: int) -> None:
    """(e) the top windows aligned at the active residue, each residue shaded by the feature's activation there;
    (f) their sequence logo."""
    rows = aligned(examples, width)
    if not rows:
        note(ax_ex, "no reference position activates it")
        note(ax_logo, "no examples")
        ax_ex.axis("off")
        return
    top = max(float(examples["activation"].max()), 1e-12)
    for r, (cells, example) in enumerate(zip(rows, examples.itertuples(), strict=True)):
        y = len(rows) - 1 - r
        for c, cell in enumerate(cells):
            if cell is None:
                continue
            residue, value = cell
            shade = 0.1 + 0.9 * float(np.clip(value / top, 0, 1))
            ax_ex.add_patch(Rectangle((c - 0.5, y - 0.5), 1, 1, color=(0.45, 0.25, 0.7, shade), linewidth=0))
            ax_ex.text(c, y, residue, ha="center", va="center", fontsize=8, family="monospace",
                       fontweight="bold" if c == width else "normal")
        ax_ex.text(2 * width + 1, y, f"{example.record}:{int(example.position)}  {float(example.activation):.3g}",
                   ha="left", va="center", fontsize=7)
    ax_ex.set_xlim(-0.5, 2 * width + 9)
    ax_ex.set_ylim(-0.5, len(rows) - 0.5)
    ax_ex.set_xticks([0, width, 2 * width], labels=[f"−{width}", "0", f"+{width}"])
    ax_ex.set_yticks([])
    for side in ("top", "right", "left"):
        ax_ex.spines[side].set_visible(False)
    ax_ex.set_title(f"(e) top {len(rows)} activating positions (record:position, activation; shade: z_j)",
                    fontsize="medium")
    for c, heights in enumerate(logo_heights(rows)):
        y = 0.0
        for residue, height in sorted(heights.items(), key=lambda kv: kv[1]):
            if height > 0:
                draw_letter(ax_logo, residue, c, y, height, RESIDUE_COLORS.get(residue, "0.5"))
                y += height
    ax_logo.set_xlim(-0.5, 2 * width + 0.5)
    ax_logo.set_ylim(0, np.log2(20))
    ax_logo.set_xticks([0, width, 2 * width], labels=[f"−{width}", "0", f"+{width}"])
    ax_logo.set_ylabel("bits")
    ax_logo.set_title("(f) sequence logo of the top windows, aligned at the active residue", fontsize="medium")


def feature_card(row: pd.Series, activity: Activity, effect: pd.Series | None, mutants: pd.DataFrame,
                 png: PathLike, pdf: PathLike, examples: pd.DataFrame | None = None, width: int = 7) -> Figure:
    """One feature at one layer, in six panels.

    `row` is the feature's ``feature_labels.csv`` row; `effect` its ``output_effects`` row (None when
    not measured); `mutants` the mutants whose IG attribution gives it weight (columns ``protein,
    mutant, attribution, rank, share``), largest |A_j| first.

    (a) mean activation at each amino acid over the reference positions, with precision on top;
    (b) activation along each configured protein's WT sequence; (c) output effect on the 20
    amino acids, ``log p(a) − log p'(a)`` with the feature removed; (d) the mutants it carries effect for;
    (e) its top-activating reference positions (`examples`: its ``features/L{layer}_examples.csv`` rows, by
    rank) and (f) their sequence logo.
    """
    j = int(row["feature"])
    fig = Figure(figsize=(13, 12.6), layout="constrained")
    (ax_aa, ax_seq), (ax_out, ax_mut), (ax_ex, ax_logo) = fig.subplots(3, 2)
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
    examples_panels(ax_ex, ax_logo, examples if examples is not None else pd.DataFrame(), width)
    frequency = float(row["frequency"]) if pd.notna(row["frequency"]) else float("nan")
    concept = (f"; top concept {row['top_concept']} (F1 {float(row['top_concept_f1']):.2f})"
               if isinstance(row.get("top_concept"), str) and row["top_concept"] else "; no concept matched")
    fig.suptitle(f"Layer {int(row['layer'])}, feature {j}: {row['label']}\n"
                 f"active at {frequency:.1%} of {activity.n_positions:,} reference positions; top residue "
                 f"{row['top_residue']} (precision {row['precision']:.2f}, recall {row['recall']:.2f}, "
                 f"F1 {row['f1']:.2f}); max activation {row['max_activation']:.3g}{concept}")
    save(fig, png, pdf)
    return fig


def draw_feature_card(layer: int, feature: int, labels_table: str | Path, activity: str | Path,
                      effects: str | Path, ig: Mapping[str, Path], png: str | Path, pdf: str | Path,
                      examples: str | Path | None = None, width: int = 7) -> None:
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
    top = None
    if examples is not None:
        every = read_table(examples, "feature_examples")
        top = every[every["feature"] == feature].sort_values("rank", kind="mergesort")
    feature_card(row.iloc[0], Activity.read(activity), effect.iloc[0] if len(effect) else None,
                 mutants, png, pdf, top, width)
