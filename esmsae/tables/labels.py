"""Rule label_features: what a feature is — residue statistics, output effect and a short label.

METHOD.md "Feature characterization". Over the reference positions (every residue of the
configured WT sequences and of an optional reference FASTA), a feature ``j`` is active at a
position when ``z_j > 0``:

* ``n_active``, ``frequency = n_active / #positions``, ``max_activation``;
* per amino acid ``a``: precision ``P_a = #{active, res = a} / n_active``, recall
  ``R_a = #{active, res = a} / #{res = a}``, ``F1_a``; ``top_residue`` is the argmax of ``F1_a``
  (ties: alphabetical), reported with its P, R and F1; an identity feature has
  ``F1_top ≥ identity_f1``;
* output effect (features shown in a table or figure): ``Δ_a = log p(a) − log p'(a)`` with the
  feature removed at positions where it is active, averaged; ``promotes`` is the argmax,
  ``suppresses`` the argmin (:mod:`esmsae.analyses.output_effects` measures it);
* a short label from these (:func:`label`).

Every table that names a feature carries its label (:func:`insert_labels`). Nothing here
imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.analyses.arrays import Activity
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.io import write_csv
from esmsae.tables.concepts import top_concepts

# The enriched-residue label: the fewest residues (at most this many) whose precisions sum to at least
# ENRICHED_SHARE of the feature's activations.
ENRICHED_MAX, ENRICHED_SHARE = 3, 0.5


def residue_scores(active_by_residue: np.ndarray, n_active: np.ndarray,
                   residue_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (each (d_sae, 20)) of every feature for every residue; 0 where undefined.

    A feature active at 4 positions, 3 of them L, in a reference with 6 L: ``P_L = 3/4``,
    ``R_L = 3/6``, ``F1_L = 2 · 3 / (4 + 6) = 0.6``. F1 is computed as ``2·hits / (n_active + n_a)``
    (METHOD.md "Concepts"), equal to ``2PR/(P+R)`` but exact in its ratio, so that equal ratios are
    equal numbers: ties break alphabetically, and a value on the identity bar is on it.
    """
    hits = np.asarray(active_by_residue, dtype=np.float64)
    active = np.asarray(n_active, dtype=np.float64)[:, None]
    count = np.asarray(residue_counts, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(active > 0, hits / active, 0.0)
        recall = np.where(count > 0, hits / count, 0.0)
        f1 = np.where(hits > 0, 2 * hits / (active + count), 0.0)
    return precision, recall, f1


def top_residues(f1: np.ndarray) -> np.ndarray:
    """Each feature's residue with the largest F1 (index into ``AMINO_ACIDS``; ties: alphabetical)."""
    return np.argmax(f1, axis=1)  # the first maximum; AMINO_ACIDS is in alphabetical order


def enriched(precision: np.ndarray) -> list[int]:
    """The fewest residues (at most 3) whose precisions sum to at least half the feature's activity, or []."""
    order = np.argsort(-precision, kind="stable")
    total = 0.0
    for n, index in enumerate(order[:ENRICHED_MAX], start=1):
        total += precision[index]
        if total >= ENRICHED_SHARE - 1e-12:
            return sorted(order[:n].tolist())
    return []


def group_f1(active_by_residue: np.ndarray, n_active: int, residue_counts: np.ndarray, group: list[int]) -> float:
    """F1 of a set of residues taken as one class (e.g. K or R)."""
    hits = float(np.sum(active_by_residue[group]))
    if hits == 0:
        return 0.0
    return 2 * hits / (n_active + float(np.sum(residue_counts[group])))


def label(n_active: int, top: int, f1_top: float, identity: bool, group: list[int], f1_group: float,
          promotes: str | None = None) -> str:
    """A short label: ``inactive on reference``, ``L-identity``, ``K/R-enriched (F1 0.41)`` or
    ``broad (top L, F1 0.12)``, then ``; promotes L`` when the output effect is known.

    A feature that never fires on the reference positions is not called dead: it may still fire
    in a mutant (and so appear in its circuit), which the reference, WT sequences by default,
    cannot see."""
    if n_active == 0:
        text = "inactive on reference"
    elif identity:
        text = f"{AMINO_ACIDS[top]}-identity"
    elif group:
        text = f"{'/'.join(AMINO_ACIDS[i] for i in group)}-enriched (F1 {f1_group:.2f})"
    else:
        text = f"broad (top {AMINO_ACIDS[top]}, F1 {f1_top:.2f})"
    return f"{text}; promotes {promotes}" if promotes else text


def feature_table(activity: Activity, identity_f1: float, effects: pd.DataFrame | None = None,
                  concepts: pd.DataFrame | None = None, concept_f1: float = 0.5) -> pd.DataFrame:
    """One row per feature of one layer (``TABLES["feature_labels"]``); the output-effect columns are
    filled for the features in `effects` (``TABLES["output_effects"]`` rows of this layer), the top concept
    from `concepts` (``TABLES["feature_concepts"]``); a label gains its top concept where F1 ≥ `concept_f1`."""
    a = activity
    precision, recall, f1 = residue_scores(a.active_by_residue, a.n_active, a.residue_counts)
    top = top_residues(f1)
    rows = np.arange(a.d_sae)
    f1_top = f1[rows, top]
    identity = (f1_top >= identity_f1) & (a.n_active > 0)
    promotes = pd.Series([None] * a.d_sae, dtype=object)
    table = pd.DataFrame({
        "layer": a.layer, "feature": rows, "n_active": a.n_active.astype(np.int64),
        "frequency": a.n_active / a.n_positions if a.n_positions else np.nan,
        "max_activation": a.max_activation.astype(np.float64),
        "top_residue": [AMINO_ACIDS[i] for i in top], "precision": precision[rows, top],
        "recall": recall[rows, top], "f1": f1_top, "identity": identity,
        "promotes": promotes, "promotes_effect": np.nan, "suppresses": promotes.copy(), "suppresses_effect": np.nan,
        "n_effect_positions": pd.array([pd.NA] * a.d_sae, dtype="Int64"),
    })
    if effects is not None and len(effects):
        delta = effects[list(AMINO_ACIDS)].to_numpy(dtype=np.float64)
        index = effects["feature"].to_numpy(dtype=np.int64)
        table.loc[index, "promotes"] = [AMINO_ACIDS[i] for i in np.argmax(delta, axis=1)]
        table.loc[index, "promotes_effect"] = delta.max(axis=1)
        table.loc[index, "suppresses"] = [AMINO_ACIDS[i] for i in np.argmin(delta, axis=1)]
        table.loc[index, "suppresses_effect"] = delta.min(axis=1)
        table.loc[index, "n_effect_positions"] = effects["n_positions"].to_numpy(dtype=np.int64)
    labels = []
    for j in rows:
        group = [] if identity[j] or a.n_active[j] == 0 else enriched(precision[j])
        labels.append(label(int(a.n_active[j]), int(top[j]), float(f1_top[j]), bool(identity[j]), group,
                            group_f1(a.active_by_residue[j], int(a.n_active[j]), a.residue_counts, group)
                            if group else 0.0, table.at[j, "promotes"]))
    names, concept_f1s = top_concepts(concepts if concepts is not None else pd.DataFrame(
        columns=TABLES["feature_concepts"]), a.layer, a.d_sae)
    table["top_concept"], table["top_concept_f1"] = names, concept_f1s
    table["label"] = [with_concept(text, name, value, concept_f1)
                      for text, name, value in zip(labels, names, concept_f1s, strict=True)]
    table["k"], table["d_sae"], table["activations"] = a.k, a.d_sae, a.activations
    return table


def with_concept(text: str, concept: str, f1: float, bar: float) -> str:
    """``L-identity; promotes L`` with a concept of F1 ≥ `bar` becomes ``L-identity; promotes L; Helix (F1 0.62)``."""
    return f"{text}; {concept} (F1 {f1:.2f})" if concept and np.isfinite(f1) and f1 >= bar else text


def labels_by_feature(labels: pd.DataFrame, layer: int) -> Mapping[int, str]:
    """``{feature: label}`` of one layer."""
    rows = labels[labels["layer"] == layer]
    return dict(zip(rows["feature"].to_numpy(dtype=np.int64).tolist(), rows["label"], strict=True))


Labels = Mapping[tuple[int, int], str]


def label_lookup(table: pd.DataFrame) -> dict[tuple[int, int], str]:
    """``{(layer, feature): label}`` from ``feature_labels.csv``."""
    return dict(zip(zip(table["layer"].astype(int), table["feature"].astype(int), strict=True),
                    table["label"].fillna("").astype(str), strict=True))


def insert_labels(frame: pd.DataFrame, labels: Labels | None, layer: int | None = None) -> pd.DataFrame:
    """`frame` with a ``label`` column right after ``feature``, looked up by (layer, feature)
    (the frame's own ``layer`` column unless `layer` is given); "" where there is none."""
    out = frame.copy()
    layers = [layer] * len(out) if layer is not None else out["layer"].tolist()
    values = [(labels or {}).get((int(lay), int(f)), "") for lay, f in zip(layers, out["feature"], strict=True)]
    out.insert(out.columns.get_loc("feature") + 1, "label", pd.Series(values, index=out.index, dtype=object))
    return out


log = logging.getLogger("esmsae")


def label_features(activity: Mapping[int, Path], effects: Mapping[int, Path], identity_f1: float,
                   out: str | Path, concepts: str | Path | None = None, concept_f1: float = 0.5) -> None:
    """Rule label_features: every feature's statistics, output effect (where measured), top concept and label."""
    parts = []
    concept_table = read_table(concepts, "feature_concepts") if concepts else None
    for layer, path in sorted(activity.items()):
        table = feature_table(Activity.read(path), identity_f1, read_table(effects[layer], "output_effects"),
                              concept_table, concept_f1)
        log.info("layer %d: %d identity features, %d inactive on the reference", layer, int(table["identity"].sum()),
                 int((table["n_active"] == 0).sum()))
        parts.append(table)
    write_csv(pd.concat(parts, ignore_index=True)[TABLES["feature_labels"]], out)
