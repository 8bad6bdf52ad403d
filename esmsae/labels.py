"""What a feature is: residue statistics, output effect, a short label, and the identity share of a mutant.

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
  ``suppresses`` the argmin (:mod:`esmsae.features` measures it);
* a short label from these (:func:`label`).

The identity share of a mutant ``a i b`` (:func:`identity_share`): how much of its attribution
the identity features of ``a`` (the WT residue) and, separately, of ``b`` carry. Nothing here
imports torch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from esmsae.errors import InputError
from esmsae.io import atomic_path, read_npz
from esmsae.mutations import AMINO_ACIDS

# The enriched-residue label: the fewest residues (at most this many) whose precisions sum to at least
# ENRICHED_SHARE of the feature's activations.
ENRICHED_MAX, ENRICHED_SHARE = 3, 0.5


@dataclass(frozen=True)
class Activity:
    """What one layer's features did over the reference positions (``features/L{layer}_activity.npz``).

    Counts only, so any number of sequences fits in memory: ``residue_counts`` (20,),
    ``n_active`` (d_sae,), ``active_by_residue`` and ``activation_by_residue`` (d_sae, 20) (counts
    and summed ``z_j`` of the positions of each residue), ``max_activation`` (d_sae,). Residues are
    in ``AMINO_ACIDS`` order. ``wt_latents`` holds each configured protein's WT latents (L, d_sae)
    for output effects and feature cards.
    """

    layer: int
    k: int
    d_sae: int
    n_sequences: int
    n_positions: int
    residue_counts: np.ndarray
    n_active: np.ndarray
    active_by_residue: np.ndarray
    activation_by_residue: np.ndarray
    max_activation: np.ndarray
    wt_latents: dict[str, np.ndarray]

    def write(self, path: str | os.PathLike) -> None:
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.name != "wt_latents"}
        arrays |= {f"wt_latents/{protein}": z for protein, z in self.wt_latents.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    @classmethod
    def read(cls, path: str | os.PathLike) -> Activity:
        arrays = read_npz(path, "feature activity")
        missing = [f.name for f in fields(cls) if f.name != "wt_latents" and f.name not in arrays]
        if missing:
            raise InputError(f"{path}: not a feature activity file (missing {', '.join(missing)})")
        scalars = {"layer", "k", "d_sae", "n_sequences", "n_positions"}
        values = {name: int(arrays[name]) if name in scalars else arrays[name]
                  for name in (f.name for f in fields(cls)) if name != "wt_latents"}
        values["wt_latents"] = {key.split("/", 1)[1]: value for key, value in arrays.items()
                                if key.startswith("wt_latents/")}
        d_sae = values["d_sae"]
        for name, shape in (("n_active", (d_sae,)), ("active_by_residue", (d_sae, 20)),
                            ("activation_by_residue", (d_sae, 20)), ("max_activation", (d_sae,)),
                            ("residue_counts", (20,))):
            if values[name].shape != shape:
                raise InputError(f"{path}: {name} has shape {values[name].shape}, expected {shape}")
        return cls(**values)


def residue_scores(active_by_residue: np.ndarray, n_active: np.ndarray,
                   residue_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (each (d_sae, 20)) of every feature for every residue; 0 where undefined.

    A feature active at 4 positions, 3 of them L, in a reference with 6 L: ``P_L = 3/4``,
    ``R_L = 3/6``, ``F1_L = 2 · 0.75 · 0.5 / 1.25 = 0.6``.
    """
    hits = np.asarray(active_by_residue, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_active[:, None] > 0, hits / np.asarray(n_active, dtype=np.float64)[:, None], 0.0)
        recall = np.where(residue_counts[None, :] > 0, hits / np.asarray(residue_counts, np.float64)[None, :], 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
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
    precision, recall = hits / n_active, hits / float(np.sum(residue_counts[group]))
    return 2 * precision * recall / (precision + recall)


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


def feature_table(activity: Activity, identity_f1: float, effects: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per feature of one layer (``TABLES["feature_labels"]``); the output-effect columns are
    filled for the features in `effects` (``TABLES["output_effects"]`` rows of this layer)."""
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
    table["label"] = labels
    table["k"], table["d_sae"] = a.k, a.d_sae
    return table


def identity_share(attribution: np.ndarray, error: float, abs_delta: np.ndarray, wt_features: np.ndarray,
                   mut_features: np.ndarray) -> dict:
    """Shares of a mutant's attribution carried by identity features of its WT and of its mutant residue.

    ``Σ_{j ∈ I} |A_j| / D`` with ``D = Σ_C |A_j| + |A_err|`` over the changed set ``C``, for ``I`` the
    identity features of the WT residue(s) and, separately, of the mutant residue(s); beside each,
    the null: the same share of ``Σ_C |Δ|`` (what the features' latent changes alone would give).
    `wt_features`/`mut_features` are boolean masks over features. Example: ``|A| = [3, 1, 0]``,
    ``A_err = 1``, WT identity feature 0, mutant identity feature 1: 3/5 and 1/5.
    """
    a = np.abs(np.asarray(attribution, dtype=np.float64))
    w = np.abs(np.asarray(abs_delta, dtype=np.float64))
    changed = w > 0
    denominator = a[changed].sum() + abs(float(error))
    null = w[changed].sum()
    nan = float("nan")
    out = {}
    for name, mask in (("wt", wt_features), ("mut", mut_features)):
        mask = np.asarray(mask, dtype=bool) & changed
        out[f"{name}_identity_share"] = float(a[mask].sum() / denominator) if denominator > 0 else nan
        out[f"{name}_identity_share_null"] = float(w[mask].sum() / null) if null > 0 else nan
        out[f"n_{name}_identity_features"] = int(mask.sum())
    return out


def identity_masks(labels: pd.DataFrame, d_sae: int) -> dict[str, np.ndarray]:
    """For each residue, the mask of its identity features in one layer's rows of the labels table."""
    masks = {aa: np.zeros(d_sae, dtype=bool) for aa in AMINO_ACIDS}
    rows = labels[labels["identity"].astype(bool)]
    for feature, residue in zip(rows["feature"].to_numpy(dtype=np.int64), rows["top_residue"], strict=True):
        masks[residue][feature] = True
    return masks


def residues_of(mutant: str, side: str) -> set[str]:
    """The WT (``side="wt"``) or mutant residues of a mutant's name, e.g. ``V5H:D39R`` -> {V, D} / {H, R}."""
    return {site[0] if side == "wt" else site[-1] for site in mutant.split(":")}


def labels_by_feature(labels: pd.DataFrame, layer: int) -> Mapping[int, str]:
    """``{feature: label}`` of one layer."""
    rows = labels[labels["layer"] == layer]
    return dict(zip(rows["feature"].to_numpy(dtype=np.int64).tolist(), rows["label"], strict=True))


def shown_features(top_features: Mapping[int, Mapping[int, int]], top_patches: Mapping[int, Mapping[int, int]],
                   universal: pd.DataFrame, circuits: Mapping[int, Mapping[int, int]], max_cards: int) -> pd.DataFrame:
    """Every (layer, feature) a table or figure shows, why, and which get a feature card.

    `top_features`, `top_patches` and `circuits` map layer -> {feature: how many mutants} (in a
    mutant's IG top-20; its largest single-feature patch; in its minimal circuit); `universal` is
    ``universal_features.csv``. Cards go to universal features first (more proteins, then layer,
    then feature), then to circuit features (more mutants first), at most `max_cards`.
    """
    in_universal = {(int(r.layer), int(r.feature)): len(str(r.proteins).split(";")) for r in universal.itertuples()}
    keys = sorted({(layer, f) for part in (top_features, top_patches, circuits) for layer, fs in part.items()
                   for f in fs} | set(in_universal))
    table = pd.DataFrame({
        "layer": [layer for layer, _ in keys], "feature": [f for _, f in keys],
        "ig_top20": [top_features.get(layer, {}).get(f, 0) for layer, f in keys],
        "top_patch": [top_patches.get(layer, {}).get(f, 0) for layer, f in keys],
        "universal": [(layer, f) in in_universal for layer, f in keys],
        "circuits": [circuits.get(layer, {}).get(f, 0) for layer, f in keys],
    }, columns=["layer", "feature", "ig_top20", "top_patch", "universal", "circuits"])
    priority = sorted(
        [((0, -in_universal[key], key[0], key[1]), key) for key in keys if key in in_universal]
        + [((1, -circuits[key[0]][key[1]], key[0], key[1]), key) for key in keys
           if key not in in_universal and circuits.get(key[0], {}).get(key[1], 0) > 0])
    carded = {key for _, key in priority[:max_cards]}
    table["card"] = [key in carded for key in keys]
    return table.astype({"layer": "int64", "feature": "int64"})


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
