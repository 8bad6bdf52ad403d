"""One registry of every table the pipeline writes: its columns, and how it is read back.

A column name means one thing across files. :func:`read_table` reads any registered
table back, checking its columns, with one error that names the file. Nothing here
imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pandas as pd

from esmsae.pipeline.errors import InputError

CONTROLS = ("real", "noop", "stable", "random")


# what every table of an intervention on one SAE records of how it was made: the SAE's k and d_sae, the
# intervention space, and the forward the SAE reads (config ``sae.activations``, METHOD.md "Which forward
# the SAEs read")
SAE_SETTINGS = ["k", "d_sae", "space", "activations"]


# what a graph table records of its two SAEs: the upstream one's k and d_sae, the downstream one's, the space
# and the forward
PAIR_SETTINGS = ["k", "d_sae", "k_down", "d_sae_down", "space", "activations"]


# what a table of one layer's features (labels, concepts, output effects) records of its SAE and forward
FEATURE_SETTINGS = ["k", "d_sae", "activations"]


TABLES: dict[str, list[str]] = {
    # per protein
    "scores": ["mutant", "position", "wt", "mut", "wt_marginal", "dms_score", "selected", "activations",
               "wt_marginal_interprot", "wt_marginal_fair_esm", "window_start", "window_end"],
    # per protein and layer
    "patching": ["mutant", "position", "layer", "feature", "control", "wt_pre", "mut_pre", "wt_latent",
                 "mut_latent", "patched_value", "baseline_score", "patched_score", "effect", *SAE_SETTINGS],
    "ig_top": ["mutant", "rank", "feature", "label", "attribution", "abs_delta", "layer", *SAE_SETTINGS],
    "circuit_curves": ["mutant", "n_features", "feature", "patched_score", "recovered_fraction", "complement_score",
                       "complement_fraction", "full_effect", "layer", *SAE_SETTINGS],
    "circuit_sizes": ["protein", "layer", "mutant", "full_effect", "negligible", "n_features", "recovered_fraction",
                      "features", *SAE_SETTINGS],
    # the study's tables
    "findings": ["claim", "scope", "statistic", "null", "test", "p", "p_other", "n", "verdict", "sentence", "figure",
                 "activations"],
    "set_ablation": ["protein", "layer", "set", "size", "features", "n_scored", "n_dms", "rho_0", "rho_a",
                     "delta_rho", "rho_clean_ablated", "mean_abs_delta",
                     *(f"null_{c}_{s}" for c in ("delta_rho", "rho_clean_ablated", "mean_abs_delta")
                       for s in ("mean", "p05", "p95")),
                     "p_delta_rho", "p_rho_clean_ablated", "k", "d_sae", "activations", "n_null", "positions"],
    "dms_correlation": ["protein", "rows", "activations", "study_forward", "n", "spearman", "p_value"],
    # per layer, both forwards (measure_sae_quality), then all layers (tabulate_sae_quality)
    "sae_fidelity": ["layer", "activations", "study_forward", "k", "d_sae", "half_k", "double_k", "fve", "mean_l0",
                     "dead_fraction", "fve_half_k", "mean_l0_half_k", "dead_fraction_half_k", "fve_double_k",
                     "mean_l0_double_k", "dead_fraction_double_k", "kl", "ce_clean", "ce_recon", "ce_zero",
                     "loss_recovered", "n_positions", "n_masked", "wrong_k", "sae_file", "sae_bytes", "sae_sha256"],
    "sae_quality": ["layer", "activations", "study_forward", "k", "d_sae", "half_k", "double_k", "fve", "mean_l0",
                    "dead_fraction", "fve_half_k", "mean_l0_half_k", "dead_fraction_half_k", "fve_double_k",
                    "mean_l0_double_k", "dead_fraction_double_k", "kl", "ce_clean", "ce_recon", "ce_zero",
                    "loss_recovered", "spearman_clean_recon_mean", "spearman_dms_clean_mean",
                    "spearman_dms_recon_mean", "n_proteins", "n_positions", "n_masked", "wrong_k", "sae_file",
                    "sae_bytes", "sae_sha256"],
    "sae_scores": ["protein", "mutant", "activations", "clean", "recon", "dms_score", "layer", "k", "d_sae"],
    "sae_task_fidelity": ["protein", "layer", "activations", "study_forward", "n", "n_dms", "spearman_dms_clean",
                          "spearman_dms_recon", "spearman_clean_recon", "k", "d_sae"],
    "control_validation": ["protein", "layer", "control", "n_mutants", "n_patches", "mean_abs_effect",
                           "sem_abs_effect", "median_abs_effect", "frac_nonzero", "frac_mutants_nonzero",
                           "wilcoxon_p", *SAE_SETTINGS],
    "layer_progression": ["protein", "layer", "n_mutants", "n_patches", "mean_abs_effect", "sem_abs_effect",
                          "median_abs_effect", "spearman_rho", "spearman_sem", "n_rho_mutants", *SAE_SETTINGS],
    "top_mutations": ["protein", "mutant", "layer", "feature", "label", "effect", "abs_effect", "wt_marginal",
                      "dms_score", *SAE_SETTINGS],
    # tables/circuit_sizes.csv: the minimal circuits read off every protein and layer's curves, labelled
    "circuit_sizes_labelled": ["protein", "layer", "mutant", "full_effect", "negligible", "n_features",
                               "recovered_fraction", "features", "labels", *SAE_SETTINGS],
    "ig_concentration": ["protein", "layer", "n_mutants",
                         *(f"{stat}_{m}" for stat in ("n_changed", "top20_share", "top20_share_null", "error_share",
                                                      "k90", "k90_null", "gini", "gini_null") for m in ("mean", "sem")),
                         "gini_above_null", "gini_wilcoxon_p", "median_completeness_error", *SAE_SETTINGS],
    "ig_concentration_mutants": ["protein", "layer", "mutant", "n_changed", "top20_share", "top20_share_null",
                                 "error_share", "k90", "k90_null", "gini", "gini_null", "total_effect",
                                 "completeness_error", *SAE_SETTINGS],
    "feature_consistency": ["protein", "feature", "label", "n_top", "n_mutants", "fraction", "layer", *SAE_SETTINGS],
    # with one freq_<protein> column per protein after "proteins"
    "universal_features": ["feature", "label", "layer", "proteins", *SAE_SETTINGS],
    # spread over positions (METHOD.md "Spread over positions")
    "positions": ["mutant", "position", "residue", "effect", "layer", "activations"],
    "positions_summary": ["mutant", "site_effect", "all_effect", "negligible", "site_share", "layer", "activations"],
    "site_share": ["protein", "layer", "n_mutants", "n_negligible", "site_share_mean", "site_share_sem",
                   "site_share_median", "all_effect_mean_abs", "site_effect_mean_abs", "activations"],
    # attribution agreement (METHOD.md "Attribution agreement")
    "agreement_mutants": ["protein", "layer", "mutant", "n_changed", "spearman_atp", "spearman_ig", "top10_atp",
                          "top10_ig", "top10_chance", "atp_linear_error", *SAE_SETTINGS],
    "attribution_agreement": ["protein", "layer", "n_mutants", "spearman_atp_mean", "spearman_atp_sem",
                              "spearman_ig_mean", "spearman_ig_sem", "top10_atp_mean", "top10_atp_sem",
                              "top10_ig_mean", "top10_ig_sem", "top10_chance_mean", "atp_linear_error_median",
                              *SAE_SETTINGS],
    # cross-layer feature graphs (METHOD.md "Cross-layer feature graph")
    "graph_nodes": ["mutant", "layer", "feature", "effect", "layer_up", "layer_down", *PAIR_SETTINGS],
    "graph_edges": ["mutant", "layer_up", "up", "layer_down", "down", "w", "linear", "mediated", "held_effect",
                    "chosen", "n_candidates", *PAIR_SETTINGS],
    "graph_shares": ["mutant", "layer_up", "up", "effect", "held", "held_effect", "mediated_share", "null_held",
                     "null_held_effect", "null_share", "layer_down", *PAIR_SETTINGS],
    "graph_aggregate": ["layer_up", "up", "up_label", "layer_down", "down", "down_label", "n_mutants", "mean_w",
                        "mean_mediated", "mean_abs_mediated", "activations"],
    "mediated_shares": ["protein", "layer_up", "layer_down", "n_mutants", "mediated_fraction_mean",
                        "mediated_fraction_sem", "null_fraction_mean", "null_fraction_sem", "frac_mutants_above_null",
                        "wilcoxon_p", "median_feature_share", "median_null_share", "atp_spearman_mean", "atp_missed",
                        "atp_checked", *PAIR_SETTINGS],
    # feature labels (METHOD.md "Feature characterization")
    "feature_labels": ["layer", "feature", "n_active", "frequency", "max_activation", "top_residue", "precision",
                       "recall", "f1", "identity", "promotes", "promotes_effect", "suppresses", "suppresses_effect",
                       "n_effect_positions", "top_concept", "top_concept_f1", "label", *FEATURE_SETTINGS],
    "feature_examples": ["layer", "feature", "rank", "record", "position", "activation", "window", "window_start",
                         "window_activations", *FEATURE_SETTINGS],
    "feature_concepts": ["layer", "feature", "concept", "n_concept", "n_active", "hits", "precision", "recall",
                         "f1", *FEATURE_SETTINGS],
    "output_effects": ["layer", "feature", "n_positions", *"ACDEFGHIKLMNPQRSTVWY", *FEATURE_SETTINGS],
    "shown_features": ["layer", "feature", "ig_top20", "top_patch", "universal", "circuits", "card", "activations"],
    "identity_share": ["protein", "layer", "n_mutants", "n_identity_features",
                       *(f"{side}_identity_share{null}_{m}" for side in ("wt", "mut") for null in ("", "_null")
                         for m in ("mean", "sem")), *SAE_SETTINGS],
    "identity_share_mutants": ["protein", "layer", "mutant", "wt", "mut", "wt_identity_share", "wt_identity_share_null",
                               "n_wt_identity_features", "mut_identity_share", "mut_identity_share_null",
                               "n_mut_identity_features", *SAE_SETTINGS],
}


# Columns read as text whatever they hold (a multi-site mutant's positions are "2:41"); so is every table's
# "activations", by read_table.
TEXT = {
    "scores": {"position": str, "wt": str, "mut": str, "activations": str},
    "sae_fidelity": {"wrong_k": str, "sae_sha256": str, "activations": str},
    "sae_quality": {"wrong_k": str, "sae_sha256": str, "activations": str},
    "sae_scores": {"mutant": str, "activations": str},
    "sae_task_fidelity": {"activations": str},
    "set_ablation": {"features": str, "activations": str, "positions": str},
    "feature_examples": {"record": str, "window": str, "window_activations": str},
    "feature_concepts": {"concept": str},
    "feature_labels": {"top_concept": str},
    "findings": {"claim": str, "scope": str, "verdict": str, "sentence": str, "figure": str},
    "patching": {"position": str, "control": str, "mutant": str, "space": str},
    "circuit_sizes": {"features": str},
    "graph_nodes": {"mutant": str, "space": str},
    "graph_shares": {"held": str, "null_held": str, "mutant": str, "space": str},
    "graph_edges": {"chosen": str, "mutant": str, "space": str},
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


CONCENTRATION_MUTANT_COLUMNS = TABLES["ig_concentration_mutants"]


CONSISTENCY_COLUMNS = TABLES["feature_consistency"]


def read_table(path: str | os.PathLike, kind: str) -> pd.DataFrame:
    """Read a table of a registered `kind` back; InputError naming the file if it is not one."""
    columns = TABLES[kind]
    try:
        table = pd.read_csv(path, dtype=TEXT.get(kind, {}) | ({"activations": str} if "activations" in columns else {}))
    except FileNotFoundError:
        raise InputError(f"{path}: {kind.replace('_', ' ')} table not found") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable {kind.replace('_', ' ')} table ({err})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{path}: not a {kind.replace('_', ' ')} table (missing column(s) {', '.join(missing)}; "
                         "if an older version of the pipeline wrote it, delete it so that its rule runs again)")
    return table


def first_settings(table: pd.DataFrame) -> dict:
    """The SAE settings (``SAE_SETTINGS``) a table built from one SAE's results records, from its first row; NA
    for an empty table."""
    return {name: table[name].iloc[0] if len(table) else pd.NA for name in SAE_SETTINGS}


def one_forward(values: Iterable, where: str) -> str | None:
    """The one forward (``activations``) that the inputs of a combined table were measured on, None when they
    hold none; inputs on two forwards are two studies mixed, an InputError naming `where`."""
    found = sorted({str(v) for v in values if not pd.isna(v)})
    if len(found) > 1:
        raise InputError(f"{where}: inputs measured on different forwards (activations {', '.join(found)}); "
                         "a study reads every SAE on one (config key sae.activations)")
    return found[0] if found else None


def typed_frame(rows: list[tuple], columns: list[str], **int_columns: str) -> pd.DataFrame:
    """A frame with the given columns (also when empty); ``int_columns`` typed as integers."""
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for name, dtype in int_columns.items():
        frame[name] = frame[name].astype(dtype)
    return frame
