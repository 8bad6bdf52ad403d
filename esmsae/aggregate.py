"""Aggregation of activation-patching tables across proteins and layers.

Every function takes ``tables``: ``{(protein, layer): patching table}``, one table per
protein×layer with the columns of ``PATCH_COLUMNS`` (METHOD.md "Activation patching").
Proteins keep the order of their first appearance among the keys; layers are ascending.
Outputs are small frames with a fixed row order, so their CSVs are byte-identical across runs.

A mutant none of whose features changed has no rows in its table; pass the number of
selected mutants per protein to :func:`layer_progression` so that ``n_mutants`` counts it.

Pure pandas/scipy: nothing here imports torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from esmsae.columns import (
    CONTROLS,
    PATCH_COLUMNS,
    PROGRESSION_COLUMNS,
    VALIDATION_COLUMNS,
    read_table,
)
from esmsae.columns import TOP_MUTATIONS_COLUMNS as TOP_COLUMNS

Tables = Mapping[tuple[str, int], pd.DataFrame]


def read_patching(path) -> pd.DataFrame:
    """Read a patching table written by the patch_features rule."""
    return read_table(path, "patching")


def ordered(tables: Tables) -> list[tuple[str, int, pd.DataFrame]]:
    """``(protein, layer, table)`` in output order, each table checked: columns, controls, finite effects."""
    proteins = list(dict.fromkeys(protein for protein, _ in tables))
    rank = {protein: i for i, protein in enumerate(proteins)}
    out = []
    for protein, layer in sorted(tables, key=lambda key: (rank[key[0]], int(key[1]))):
        table = tables[(protein, layer)]
        where = f"patching table ({protein!r}, layer {layer})"
        missing = [c for c in PATCH_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{where}: missing columns {missing}")
        unknown = sorted(set(table["control"].astype(str)) - set(CONTROLS))
        if unknown:
            raise ValueError(f"{where}: unknown controls {unknown}; expected {list(CONTROLS)}")
        if len(table) and not np.isfinite(table["effect"].to_numpy(dtype=np.float64)).all():
            raise ValueError(f"{where}: column 'effect' has NaN or infinite values")
        out.append((protein, int(layer), table))
    return out


def site_values(column: pd.Series) -> list[np.ndarray]:
    """Per-site values of a patching column: a number, or ':'-joined numbers for a multi-site mutant."""
    return [np.array([float(v) for v in str(x).split(":")]) if isinstance(x, str) else np.array([float(x)])
            for x in column]


def real_patches(table: pd.DataFrame) -> pd.DataFrame:
    """The table's ``real`` rows with ``abs_delta`` = Σ_sites |mut_latent − wt_latent| and ``abs_effect`` = |effect|."""
    real = table.loc[table["control"] == "real"].copy()
    real["abs_delta"] = [float(np.abs(m - w).sum()) for m, w in
                         zip(site_values(real["mut_latent"]), site_values(real["wt_latent"]), strict=True)]
    real["abs_effect"] = np.abs(real["effect"].to_numpy(dtype=np.float64))
    return real


def abs_effects(table: pd.DataFrame, control: str) -> np.ndarray:
    """|effect| of one control's rows, as float64."""
    return np.abs(table.loc[table["control"] == control, "effect"].to_numpy(dtype=np.float64))


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman ρ and its p-value; ``(nan, nan)`` for fewer than 3 points or a constant input."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def _summary(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, sample std (ddof=1) and median; NaN where undefined."""
    n = values.size
    mean = float(values.mean()) if n else float("nan")
    std = float(values.std(ddof=1)) if n >= 2 else float("nan")
    median = float(np.median(values)) if n else float("nan")
    return mean, std, median


def control_validation(tables: Tables) -> pd.DataFrame:
    """|effect| of each control against the real patches, per protein, layer and control.

    One row per (protein, layer, control), controls in the order real, noop, stable, random.
    ``mwu_u``/``mwu_p``: two-sided Mann–Whitney U of |real effects| against |control effects|;
    NaN on the real row and where either side is empty.
    """
    rows = []
    for protein, layer, table in ordered(tables):
        real = abs_effects(table, "real")
        for control in CONTROLS:
            values = abs_effects(table, control)
            u = p = float("nan")
            if control != "real" and real.size and values.size:
                result = stats.mannwhitneyu(real, values, alternative="two-sided")
                u, p = float(result.statistic), float(result.pvalue)
            rows.append((protein, layer, control, int(values.size), *_summary(values), u, p))
    return _frame(rows, VALIDATION_COLUMNS, n="int64")


def layer_progression(tables: Tables, selected: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Real-patch |effect| per protein and layer, and its Spearman correlation with |Δ latent|.

    ``n_mutants`` is the protein's number of selected mutants when `selected` gives it,
    else the distinct mutants among the table's rows; ``n_patches`` counts real rows.
    ``spearman_*`` is NaN for fewer than 3 real rows or a constant input.
    """
    rows = []
    for protein, layer, table in ordered(tables):
        real = real_patches(table)
        mean, _, median = _summary(real["abs_effect"].to_numpy())
        rho, p = spearman(real["abs_delta"].to_numpy(), real["abs_effect"].to_numpy())
        n_mutants = selected[protein] if selected and protein in selected else table["mutant"].nunique()
        rows.append((protein, layer, int(n_mutants), len(real), mean, median, rho, p))
    return _frame(rows, PROGRESSION_COLUMNS, n_mutants="int64", n_patches="int64")


def top_mutations(tables: Tables, scores: Mapping[str, pd.DataFrame], top_n: int) -> pd.DataFrame:
    """Each protein's ``top_n`` mutants by their single largest real-patch |effect| over all layers and features.

    A mutant's row is the real patch with the largest |effect|; ties go to the lowest layer, then
    the lowest feature. Rows are ordered by protein (input order), |effect| descending, then layer,
    feature and mutant ascending. ``wt_marginal`` and ``dms_score`` come from ``scores[protein]``
    (esmsae.scoring.SCORE_COLUMNS), joined by mutant; a mutant absent there gets NaN.
    """
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 0:
        raise ValueError(f"top_n must be a non-negative integer, got {top_n!r}")
    by_protein: dict[str, list[pd.DataFrame]] = {}
    for protein, layer, table in ordered(tables):
        real = real_patches(table)
        frame = pd.DataFrame({
            "mutant": real["mutant"].astype(str).to_numpy(dtype=object),
            "layer": np.full(len(real), layer, dtype=np.int64),
            "feature": real["feature"].to_numpy(dtype=np.int64),
            "effect": real["effect"].to_numpy(dtype=np.float64),
            "abs_effect": real["abs_effect"].to_numpy(dtype=np.float64),
        })
        by_protein.setdefault(protein, []).append(frame)

    parts = []
    for protein, frames in by_protein.items():
        patches = pd.concat(frames, ignore_index=True)
        if patches.empty:
            continue
        best = (patches.sort_values(["mutant", "abs_effect", "layer", "feature"],
                                    ascending=[True, False, True, True], kind="mergesort")
                .drop_duplicates("mutant", keep="first"))
        best = (best.sort_values(["abs_effect", "layer", "feature", "mutant"],
                                 ascending=[False, True, True, True], kind="mergesort")
                .head(top_n))
        if protein not in scores:
            raise ValueError(f"top_mutations: no scores table for protein {protein!r}")
        table = scores[protein]
        missing = [c for c in ("mutant", "wt_marginal", "dms_score") if c not in table.columns]
        if missing:
            raise ValueError(f"top_mutations: scores table of {protein!r} lacks columns {missing}")
        if table["mutant"].duplicated().any():
            raise ValueError(f"top_mutations: scores table of {protein!r} lists a mutant more than once")
        lookup = table.assign(mutant=table["mutant"].astype(str)).set_index("mutant")
        best = best.assign(
            protein=protein,
            wt_marginal=lookup["wt_marginal"].reindex(best["mutant"]).to_numpy(dtype=np.float64),
            dms_score=lookup["dms_score"].reindex(best["mutant"]).to_numpy(dtype=np.float64),
        )
        parts.append(best[TOP_COLUMNS])
    if not parts:
        return _frame([], TOP_COLUMNS, layer="int64", feature="int64")
    return pd.concat(parts, ignore_index=True)


def _frame(rows: list[tuple], columns: list[str], **int_columns: str) -> pd.DataFrame:
    """A frame with the given columns (also when empty); ``int_columns`` typed as integers."""
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for name, dtype in int_columns.items():
        frame[name] = frame[name].astype(dtype)
    return frame
