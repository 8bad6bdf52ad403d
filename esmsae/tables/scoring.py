"""Rule correlate_dms: Spearman ρ of the WT-marginal scores with the DMS scores (no torch here)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from scipy import stats

from esmsae.config.settings import ACTIVATIONS
from esmsae.pipeline.columns import (
    DMS_CORRELATION_COLUMNS,
    read_table,
)
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import write_csv


def dms_correlation(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Spearman ρ between WT-marginal and DMS scores, per protein, over rows with both.

    Two row sets per protein (METHOD.md "Mutation selection"): ``singles`` (single substitutions
    only) and ``all`` (multi-site rows too; the same as singles when there are none), each under
    both forwards (METHOD.md "Which forward the SAEs read": the scores table carries both), the
    study's own marked ``study_forward``. A set with fewer than 3 rows gets NaN; a protein with
    fewer than 3 rows in all is an error.
    """
    rows = []
    for protein, table in tables.items():
        have = table["dms_score"].notna()
        if have.sum() < 3:
            raise InputError(f"{protein}: fewer than 3 mutants with DMS scores; cannot correlate")
        single = ~table["mutant"].astype(str).str.contains(":")
        study = str(table["activations"].iloc[0])
        for name, subset in (("singles", have & single), ("all", have)):
            for activations in ACTIVATIONS:
                column = "wt_marginal_" + activations.replace("-", "_")
                rho = p = float("nan")
                if subset.sum() >= 3:
                    result = stats.spearmanr(table.loc[subset, column], table.loc[subset, "dms_score"])
                    rho, p = float(result.statistic), float(result.pvalue)
                rows.append({"protein": protein, "rows": name, "activations": activations,
                             "study_forward": activations == study, "n": int(subset.sum()), "spearman": rho,
                             "p_value": p})
    return pd.DataFrame(rows, columns=DMS_CORRELATION_COLUMNS)


log = logging.getLogger("esmsae")


def correlate_dms(scores: Mapping[str, Path], out: str | Path) -> None:
    """Rule correlate_dms: Spearman ρ of WT-marginal scores with DMS scores, per protein."""
    table = dms_correlation({protein: read_table(path, "scores") for protein, path in scores.items()})
    write_csv(table, out)
