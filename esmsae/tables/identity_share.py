"""Rule tabulate_identity_share: how much of a mutant's attribution is "the residue changed".

METHOD.md "Feature characterization": the identity share of a mutant ``a i b``
(:func:`identity_share`) is how much of its attribution the identity features of ``a`` (the WT
residue) and, separately, of ``b`` carry, each beside its null. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.analyses.arrays import Attributions
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.pipeline.columns import TABLES, first_settings, read_table
from esmsae.pipeline.io import write_csv
from esmsae.tables.statistics import mean_sem


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


def tabulate_identity_share(labels_table: str | Path, ig: Mapping[tuple[str, int], Path],
                            out: Mapping[str, Path]) -> None:
    """Rule tabulate_identity_share: per mutant and per protein × layer."""
    table = read_table(labels_table, "feature_labels")
    rows = []
    for (protein, layer), path in ig.items():
        result = Attributions.read(path)
        masks = identity_masks(table[table["layer"] == layer], result.attribution.shape[1])
        for m, name in enumerate(result.mutant.tolist()):
            wt, mut = residues_of(name, "wt"), residues_of(name, "mut")
            share = identity_share(result.attribution[m], result.error_attribution[m], result.abs_delta[m],
                                   np.any([masks[a] for a in wt], axis=0),
                                   np.any([masks[b] for b in mut], axis=0))
            rows.append({"protein": protein, "layer": layer, "mutant": name, "wt": ":".join(sorted(wt)),
                         "mut": ":".join(sorted(mut)), **share,
                         **result.sae_settings})
    mutants = pd.DataFrame(rows, columns=TABLES["identity_share_mutants"])
    summary = []
    for (protein, layer), part in mutants.groupby(["protein", "layer"], sort=False):
        row = {"protein": protein, "layer": layer, "n_mutants": len(part),
               "n_identity_features": int(table[(table["layer"] == layer)]["identity"].astype(bool).sum())}
        for side in ("wt", "mut"):
            for null in ("", "_null"):
                column = f"{side}_identity_share{null}"
                row[f"{column}_mean"], row[f"{column}_sem"] = mean_sem(part[column].to_numpy(dtype=np.float64))
        summary.append(row | first_settings(part))
    write_csv(mutants, out["mutants"])
    write_csv(pd.DataFrame(summary, columns=TABLES["identity_share"]), out["table"])
