"""Rule tabulate_site_share: METHOD.md "Spread over positions", the site share per protein × layer.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.io import write_csv
from esmsae.tables.statistics import mean_sem


def site_share_table(summaries: Mapping[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Per protein × layer: the site share ``Σ_sites P_site / P_all`` over mutants (mean ± s.e.m., median),
    negligible mutants (``|P_all| < positions.min_effect``: no share) counted apart."""
    rows = []
    for (protein, layer), table in summaries.items():
        share = table["site_share"].to_numpy(dtype=np.float64)
        mean, sem = mean_sem(share)
        finite = share[np.isfinite(share)]
        negligible = table["negligible"].astype(str).str.lower().eq("true")
        rows.append({"protein": protein, "layer": int(layer), "n_mutants": len(table),
                     "n_negligible": int(negligible.sum()), "site_share_mean": mean,
                     "site_share_sem": sem, "site_share_median": float(np.median(finite)) if finite.size else np.nan,
                     "all_effect_mean_abs": float(table["all_effect"].abs().mean()) if len(table) else np.nan,
                     "site_effect_mean_abs": float(table["site_effect"].abs().mean()) if len(table) else np.nan,
                     "activations": table["activations"].iloc[0] if len(table) else pd.NA})
    return pd.DataFrame(rows, columns=TABLES["site_share"])


def tabulate_site_share(summaries: Mapping[tuple[str, int], Path], out: str | Path) -> None:
    """Rule tabulate_site_share: the site share per protein × layer."""
    write_csv(site_share_table({key: read_table(path, "positions_summary")
                                for key, path in summaries.items()}), out)
