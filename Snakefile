# Which SAE features causally carry ESM-2's mutation-effect predictions.
#
#   snakemake --profile profiles/demo          # offline demo on a tiny model
#   snakemake --profile profiles/local         # the study in config.yaml, one machine
#   snakemake --profile profiles/demo -n       # what would run
#
# Light rules (tables, figures) are `localrule: True`: they run where Snakemake runs, never as
# cluster jobs.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"


rule all:
    default_target: True
    input:
        all_targets(),
        feature_cards,


include: "rules/demo.smk"
include: "rules/sae.smk"
include: "rules/scoring.smk"
include: "rules/patching.smk"
include: "rules/ig.smk"
include: "rules/circuits.smk"
include: "rules/labels.smk"
include: "rules/agreement.smk"
include: "rules/positions.smk"
include: "rules/graph.smk"
include: "rules/ablation.smk"
include: "rules/report.smk"
include: "rules/figures.smk"
