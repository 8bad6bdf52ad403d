"""Column lists of the tables the pipeline writes, defined once (no torch import here)."""

SCORE_COLUMNS = ["mutant", "position", "wt", "mut", "wt_marginal", "dms_score", "selected"]
PATCH_COLUMNS = ["mutant", "position", "layer", "feature", "control", "wt_pre", "mut_pre", "wt_latent",
                 "mut_latent", "patched_value", "baseline_score", "patched_score", "effect", "k", "space"]
CONTROLS = ("real", "noop", "stable", "random")
