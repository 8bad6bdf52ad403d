"""Rule tabulate_sae_quality: every layer's SAE fidelity in one table, and its task fidelity per protein.

METHOD.md "SAE fidelity". ``sae_quality/L{layer}.csv`` (one row per forward) and
``sae_quality/L{layer}_scores.csv`` (every scored single's WT-marginal score, clean and with the
reconstruction spliced in) come from :mod:`esmsae.analyses.sae_quality`. Here, per protein ×
layer × forward: Spearman ρ of the clean scores and of the reconstructed scores with DMS (where
the assay has them), and ρ(clean, reconstructed): how much of the model's variant-effect
prediction passes through the SAE's features at all — the ceiling of every SAE finding. The
quality table carries their mean over proteins. Nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.io import write_csv
from esmsae.tables.statistics import spearman

log = logging.getLogger(__name__)


def task_fidelity(scores: pd.DataFrame, study: str) -> pd.DataFrame:
    """Per protein × layer × forward of one ``sae_scores`` table: ρ with DMS clean and reconstructed, and
    ρ(clean, reconstructed). DMS ρs use the singles that have a DMS score (NaN below 3)."""
    rows = []
    for (protein, layer, activations), part in scores.groupby(["protein", "layer", "activations"], sort=False):
        dms = part["dms_score"].notna().to_numpy()
        clean, recon = part["clean"].to_numpy(np.float64), part["recon"].to_numpy(np.float64)
        rows.append({"protein": protein, "layer": int(layer), "activations": activations,
                     "study_forward": activations == study, "n": len(part), "n_dms": int(dms.sum()),
                     "spearman_dms_clean": spearman(clean[dms], part["dms_score"].to_numpy(np.float64)[dms])[0],
                     "spearman_dms_recon": spearman(recon[dms], part["dms_score"].to_numpy(np.float64)[dms])[0],
                     "spearman_clean_recon": spearman(clean, recon)[0],
                     "k": int(part["k"].iloc[0]), "d_sae": int(part["d_sae"].iloc[0])})
    return pd.DataFrame(rows, columns=TABLES["sae_task_fidelity"])


def quality_table(fidelity: pd.DataFrame, task: pd.DataFrame) -> pd.DataFrame:
    """The per-layer fidelity rows (both forwards) with the mean over proteins of the task-fidelity ρs."""
    means = (task.groupby(["layer", "activations"], sort=False)
             .agg(spearman_clean_recon_mean=("spearman_clean_recon", "mean"),
                  spearman_dms_clean_mean=("spearman_dms_clean", "mean"),
                  spearman_dms_recon_mean=("spearman_dms_recon", "mean"),
                  n_proteins=("protein", "nunique"))
             .reset_index())
    out = fidelity.merge(means, on=["layer", "activations"], how="left")
    out["n_proteins"] = out["n_proteins"].fillna(0).astype(np.int64)
    return out.sort_values(["layer", "study_forward"], ascending=[True, False], kind="mergesort")[
        TABLES["sae_quality"]].reset_index(drop=True)


def tabulate_sae_quality(quality: Mapping[int, Path], scores: Mapping[int, Path], out: Mapping[str, Path]) -> None:
    """Rule tabulate_sae_quality: ``tables/sae_quality.csv`` and ``tables/sae_task_fidelity.csv``."""
    fidelity = pd.concat([read_table(quality[layer], "sae_fidelity") for layer in sorted(quality)], ignore_index=True)
    study = str(fidelity.loc[fidelity["study_forward"].astype(bool), "activations"].iloc[0])
    task = pd.concat([task_fidelity(read_table(scores[layer], "sae_scores"), study) for layer in sorted(scores)],
                     ignore_index=True)
    table = quality_table(fidelity, task)
    for row in table[table["wrong_k"].fillna("").astype(str) != ""].itertuples():
        log.warning("%s (layer %d, %s forward): FVE is far higher at %s than at k = %d", row.sae_file, row.layer,
                    row.activations, row.wrong_k, row.k)
    log.info("SAE fidelity:\n%s", table[["layer", "activations", "fve", "kl", "loss_recovered",
                                         "spearman_clean_recon_mean"]].to_string(index=False))
    write_csv(table, out["table"])
    write_csv(task, out["task"])
