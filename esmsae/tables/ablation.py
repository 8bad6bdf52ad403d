"""Rule tabulate_set_ablation: each named feature set's effect on the whole assay's prediction, beside its nulls.

METHOD.md "Feature-set ablation against the assay". From each job's ablated scores
(:mod:`esmsae.analyses.ablation`), per protein × layer × set, over the singles of the scores table:
``ρ_0 = ρ(clean, DMS)``, ``ρ_A = ρ(ablated, DMS)``, ``Δρ = ρ_A − ρ_0``, ``ρ(clean, ablated)`` and the
mean ``|Δ score|``; for the ``n_null`` frequency-matched random sets the mean and 5–95 % range of
each, and the one-sided empirical p ``(1 + #{null Δρ ≤ Δρ_A}) / (1 + n_null)`` (and the same for
ρ(clean, ablated)): small when removing the set hurts the prediction more than removing as many
comparable features. Without DMS scores only the ρ(clean, ablated) and |Δ score| columns are
filled. Nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.analyses.arrays import read_ablation
from esmsae.pipeline.columns import TABLES
from esmsae.pipeline.io import write_csv
from esmsae.tables.statistics import spearman

log = logging.getLogger(__name__)
MIN_DMS = 3  # singles with DMS below which the DMS columns are NaN


def empirical_p(value: float, null: np.ndarray) -> float:
    """One-sided empirical p that `value` is at most the null: ``(1 + #{null ≤ value}) / (1 + n)``; NaN if undefined."""
    null = np.asarray(null, dtype=np.float64)
    if not np.isfinite(value) or not len(null) or not np.isfinite(null).all():
        return float("nan")
    return float((1 + np.sum(null <= value)) / (1 + len(null)))


def spread(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and the 5th and 95th percentiles (numpy's linear interpolation); NaNs if any value is NaN."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values) or not np.isfinite(values).all():
        return float("nan"), float("nan"), float("nan")
    return float(values.mean()), float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))


def row_statistics(ablated: np.ndarray, clean: np.ndarray, dms: np.ndarray) -> dict[str, float]:
    """ρ_A, Δρ, ρ(clean, ablated) and mean |Δ score| of one ablated row, over the singles (DMS where present)."""
    have = np.isfinite(dms)
    rho_0 = spearman(clean[have], dms[have])[0] if have.sum() >= MIN_DMS else float("nan")
    rho_a = spearman(ablated[have], dms[have])[0] if have.sum() >= MIN_DMS else float("nan")
    return {"rho_0": rho_0, "rho_a": rho_a, "delta_rho": rho_a - rho_0,
            "rho_clean_ablated": spearman(clean, ablated)[0],
            "mean_abs_delta": float(np.abs(ablated - clean).mean()) if len(clean) else float("nan")}


def ablation_rows(arrays: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per set of one job's file: the set's statistics, its nulls' spread and the empirical p."""
    clean, dms = arrays["clean"].astype(np.float64), arrays["dms"].astype(np.float64)
    names, draws = arrays["set"].astype(str), arrays["draw"].astype(np.int64)
    stats = [row_statistics(arrays["scores"][r].astype(np.float64), clean, dms) for r in range(len(names))]
    rows = []
    for name in dict.fromkeys(names.tolist()):
        real = int(np.flatnonzero((names == name) & (draws == -1))[0])
        nulls = np.flatnonzero((names == name) & (draws >= 0))
        features = arrays["features"][real]
        row = {"protein": str(arrays["protein"]), "layer": int(arrays["layer"]), "set": name,
               "size": int(arrays["size"][real]), "features": ";".join(str(int(j)) for j in features[features >= 0]),
               "n_scored": len(clean), "n_dms": int(np.isfinite(dms).sum()), **stats[real]}
        for column in ("delta_rho", "rho_clean_ablated", "mean_abs_delta"):
            null = np.array([stats[r][column] for r in nulls])
            row[f"null_{column}_mean"], row[f"null_{column}_p05"], row[f"null_{column}_p95"] = spread(null)
        row["p_delta_rho"] = empirical_p(row["delta_rho"], np.array([stats[r]["delta_rho"] for r in nulls]))
        row["p_rho_clean_ablated"] = empirical_p(row["rho_clean_ablated"],
                                                 np.array([stats[r]["rho_clean_ablated"] for r in nulls]))
        rows.append(row | {"k": int(arrays["k"]), "d_sae": int(arrays["d_sae"]),
                           "activations": str(arrays["activations"]), "n_null": len(nulls),
                           "positions": str(arrays["positions"])})
    return pd.DataFrame(rows, columns=TABLES["set_ablation"])


def tabulate_set_ablation(ablation: Mapping[tuple[str, int], Path], out: str | Path) -> None:
    """Rule tabulate_set_ablation: ``tables/set_ablation.csv`` over every protein and layer."""
    parts = [ablation_rows(read_ablation(path)) for _, path in sorted(ablation.items(), key=lambda kv: kv[0][1])]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLES["set_ablation"])
    order = {p: i for i, p in enumerate(dict.fromkeys(p for p, _ in ablation))}
    table = table.sort_values(["protein", "layer"], key=lambda c: c.map(order) if c.name == "protein" else c,
                              kind="mergesort").reset_index(drop=True)
    log.info("set ablation:\n%s", table[["protein", "layer", "set", "size", "delta_rho", "p_delta_rho",
                                          "rho_clean_ablated", "p_rho_clean_ablated"]].to_string(index=False))
    write_csv(table, out)
