"""One registry of every table the pipeline writes: its columns, and how it is read back.

A column name means one thing across files. :func:`read_table` reads any registered
table back, checking its columns, with one error that names the file. Nothing here
imports torch.
"""

from __future__ import annotations

import os

import pandas as pd

from esmsae.errors import InputError

CONTROLS = ("real", "noop", "stable", "random")

TABLES: dict[str, list[str]] = {
    # per protein
    "scores": ["mutant", "position", "wt", "mut", "wt_marginal", "dms_score", "selected"],
    # per protein and layer
    "patching": ["mutant", "position", "layer", "feature", "control", "wt_pre", "mut_pre", "wt_latent",
                 "mut_latent", "patched_value", "baseline_score", "patched_score", "effect", "k", "space"],
    "ig_top": ["mutant", "rank", "feature", "attribution"],
    "circuit_curves": ["mutant", "k", "patched_score", "recovered_fraction"],
    "circuit_sizes": ["protein", "layer", "mutant", "total_effect", "minimal_k"],
    # the study's tables
    "dms_correlation": ["protein", "n", "spearman", "p_value"],
    "sae_quality": ["layer", "d_sae", "k", "fve", "mean_l0", "dead_fraction", "n_positions"],
    "control_validation": ["protein", "layer", "control", "n", "mean_abs_effect", "std_abs_effect",
                           "median_abs_effect", "mwu_u", "mwu_p"],
    "layer_progression": ["protein", "layer", "n_mutants", "n_patches", "mean_abs_effect", "median_abs_effect",
                          "spearman_rho", "spearman_p"],
    "top_mutations": ["protein", "mutant", "layer", "feature", "effect", "abs_effect", "wt_marginal", "dms_score"],
    "ig_concentration": ["protein", "layer", "n_mutants", "mean_gini", "std_gini", "mean_top20_share",
                         "median_completeness_error", "mean_error_share"],
    "feature_consistency": ["protein", "feature", "n_top", "n_mutants", "fraction"],
    # then one freq_<protein> column per protein
    "universal_features": ["feature", "layer", "proteins"],
}
# Columns read as text whatever they hold (a multi-site mutant's positions are "2:41").
TEXT = {
    "scores": {"position": str, "wt": str, "mut": str},
    "patching": {"position": str, "control": str, "mutant": str, "space": str},
}

SCORE_COLUMNS = TABLES["scores"]
PATCH_COLUMNS = TABLES["patching"]
IG_TOP_COLUMNS = TABLES["ig_top"]
CURVE_COLUMNS = TABLES["circuit_curves"]
SIZE_COLUMNS = TABLES["circuit_sizes"]
DMS_CORRELATION_COLUMNS = TABLES["dms_correlation"]
QUALITY_COLUMNS = TABLES["sae_quality"]
VALIDATION_COLUMNS = TABLES["control_validation"]
PROGRESSION_COLUMNS = TABLES["layer_progression"]
TOP_MUTATIONS_COLUMNS = TABLES["top_mutations"]
CONCENTRATION_COLUMNS = TABLES["ig_concentration"]
CONSISTENCY_COLUMNS = TABLES["feature_consistency"]


def read_table(path: str | os.PathLike, kind: str) -> pd.DataFrame:
    """Read a table of a registered `kind` back; InputError naming the file if it is not one."""
    columns = TABLES[kind]
    try:
        table = pd.read_csv(path, dtype=TEXT.get(kind))
    except FileNotFoundError:
        raise InputError(f"{path}: {kind.replace('_', ' ')} table not found") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable {kind.replace('_', ' ')} table ({err})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{path}: not a {kind.replace('_', ' ')} table (missing column(s) {', '.join(missing)})")
    return table
