"""Rule tabulate_patching: control validation, layer progression and top mutations.

Every function takes ``tables``: ``{(protein, layer): patching table}``, one table per
protein×layer with the columns of ``PATCH_COLUMNS`` (METHOD.md "Activation patching").
Proteins keep the order of their first appearance among the keys; layers are ascending.
Outputs are small frames with a fixed row order, so their CSVs are byte-identical across runs.

A mutant none of whose features changed has no rows in its table; pass the number of
selected mutants per protein to :func:`layer_progression` so that ``n_mutants`` counts it.

Pure pandas/scipy: nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.pipeline.columns import (
    CONTROLS,
    PATCH_COLUMNS,
    PROGRESSION_COLUMNS,
    VALIDATION_COLUMNS,
    first_settings,
    read_table,
    typed_frame,
)
from esmsae.pipeline.columns import TOP_MUTATIONS_COLUMNS as TOP_COLUMNS
from esmsae.pipeline.io import write_csv
from esmsae.tables.labels import Labels, label_lookup
from esmsae.tables.statistics import mean_sem, spearman, wilcoxon_p

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


def per_mutant_abs_effect(table: pd.DataFrame, control: str) -> pd.Series:
    """Each mutant's mean |effect| over its patches of one control (the mutant is the unit), by mutant."""
    rows = table.loc[table["control"] == control]
    return rows["effect"].abs().groupby(rows["mutant"], sort=True).mean()


def control_validation(tables: Tables) -> pd.DataFrame:
    """|effect| of each control beside the real patches, per protein, layer and control, the mutant as the unit.

    One row per (protein, layer, control), controls in the order real, noop, stable, random.
    Each mutant contributes one value, its mean |effect| over that control's patches:
    ``mean_abs_effect``, ``sem_abs_effect`` (``std(ddof=1)/√n``) and ``median_abs_effect`` are
    over mutants. ``frac_nonzero`` is the share of the control's patches with a nonzero effect,
    ``frac_mutants_nonzero`` the share of mutants with any. ``wilcoxon_p``: two-sided Wilcoxon
    signed-rank test of the paired per-mutant differences real − control (NaN on the real row,
    below 2 mutants, or when every difference is 0).
    """
    rows = []
    for protein, layer, table in ordered(tables):
        real = per_mutant_abs_effect(table, "real")
        for control in CONTROLS:
            values = per_mutant_abs_effect(table, control)
            effects = table.loc[table["control"] == control, "effect"].to_numpy(dtype=np.float64)
            nonzero = table.loc[table["control"] == control].assign(nz=effects != 0).groupby("mutant")["nz"].any()
            p = float("nan")
            if control != "real":
                paired = real.index.intersection(values.index)
                p = wilcoxon_p((real[paired] - values[paired]).to_numpy(dtype=np.float64))
            mean, sem = mean_sem(values.to_numpy(dtype=np.float64))
            rows.append((protein, layer, control, len(values), len(effects), mean, sem,
                         float(values.median()) if len(values) else float("nan"),
                         float((effects != 0).mean()) if len(effects) else float("nan"),
                         float(nonzero.mean()) if len(nonzero) else float("nan"), p, *first_settings(table).values()))
    return typed_frame(rows, VALIDATION_COLUMNS, n_mutants="int64", n_patches="int64")


def layer_progression(tables: Tables, selected: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Real-patch |effect| per protein and layer, and how it follows |Δ latent|, the mutant as the unit.

    ``n_mutants`` is the protein's number of selected mutants when `selected` gives it, else the
    distinct mutants among the table's rows; ``n_patches`` counts real rows. ``mean_abs_effect``,
    ``sem_abs_effect`` and ``median_abs_effect`` are over mutants (each its mean |effect|).
    ``spearman_rho`` is the mean over mutants of each mutant's Spearman ρ between |Δ latent| and
    |effect| of its real patches (mutants with at least 3 and a non-constant input:
    ``n_rho_mutants``), ``spearman_sem`` its standard error.
    """
    rows = []
    for protein, layer, table in ordered(tables):
        real = real_patches(table)
        by_mutant = real.groupby("mutant", sort=True)
        mean, sem = mean_sem(by_mutant["abs_effect"].mean().to_numpy(dtype=np.float64))
        median = float(by_mutant["abs_effect"].mean().median()) if len(real) else float("nan")
        rhos = np.array([spearman(g["abs_delta"].to_numpy(), g["abs_effect"].to_numpy())[0] for _, g in by_mutant],
                        dtype=np.float64)
        rhos = rhos[np.isfinite(rhos)]
        rho, rho_sem = mean_sem(rhos)
        n_mutants = selected[protein] if selected and protein in selected else table["mutant"].nunique()
        rows.append((protein, layer, int(n_mutants), len(real), mean, sem, median, rho, rho_sem, len(rhos),
                     *first_settings(table).values()))
    return typed_frame(rows, PROGRESSION_COLUMNS, n_mutants="int64", n_patches="int64", n_rho_mutants="int64")


def top_mutations(tables: Tables, scores: Mapping[str, pd.DataFrame], top_n: int,
                  labels: Labels | None = None) -> pd.DataFrame:
    """Each protein's ``top_n`` mutants by their single largest real-patch |effect| over all layers and features.

    A mutant's row is the real patch with the largest |effect|; ties go to the lowest layer, then
    the lowest feature. Rows are ordered by protein (input order), |effect| descending, then layer,
    feature and mutant ascending. ``wt_marginal`` and ``dms_score`` come from ``scores[protein]``
    (esmsae.pipeline.columns), joined by mutant; a mutant absent there gets NaN. ``label`` comes
    from `labels` (``{(layer, feature): label}``, "" where there is none).
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
            **first_settings(table),
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
        best = best.assign(label=[(labels or {}).get((int(lay), int(f)), "") for lay, f in
                                  zip(best["layer"], best["feature"], strict=True)])
        parts.append(best[TOP_COLUMNS])
    if not parts:
        return typed_frame([], TOP_COLUMNS, layer="int64", feature="int64")
    return pd.concat(parts, ignore_index=True)


log = logging.getLogger("esmsae")


def tabulate_patching(patching: Mapping[tuple[str, int], Path], scores: Mapping[str, Path], top_n: int,
                      labels_table: str | Path, out: Mapping[str, Path]) -> None:
    """Rule tabulate_patching: control validation, layer progression and top mutations (labelled)."""
    tables = {pair: read_patching(path) for pair, path in patching.items()}
    score_tables = {protein: read_table(path, "scores") for protein, path in scores.items()}
    selected = {protein: int(t["selected"].sum()) for protein, t in score_tables.items()}
    write_csv(control_validation(tables), out["validation"])
    write_csv(layer_progression(tables, selected), out["progression"])
    names = label_lookup(read_table(labels_table, "feature_labels"))
    write_csv(top_mutations(tables, score_tables, top_n, names), out["top"])
