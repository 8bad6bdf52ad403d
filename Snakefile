# Which SAE features causally carry ESM-2's mutation-effect predictions.
#
#   snakemake --profile profiles/demo          # offline demo on a tiny model
#   snakemake --profile profiles/local         # the study in config.yaml, one machine
#   snakemake --profile profiles/demo -n       # what would run
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"


# Light rules (tables, figures) run where Snakemake runs, never as cluster jobs.
localrules:
    all,
    dms_correlation,
    patching_tables,
    ig_tables,
    circuit_sizes,
    plot_layer_effects,
    plot_controls,
    plot_delta_vs_effect,
    plot_ig_concentration,
    plot_universal_features,
    plot_circuit_faithfulness,
    plot_minimal_circuit_sizes,


rule all:
    default_target: True
    input:
        all_targets(),


include: "rules/demo.smk"
include: "rules/sae.smk"
include: "rules/scoring.smk"
include: "rules/patching.smk"
include: "rules/attribution.smk"
