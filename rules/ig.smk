# Integrated gradients with an error node, and the tables of its attributions.


rule integrate_gradients:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        npz=ig_file("{protein}", "{layer}"),
    log:
        f"{OUTDIR}/logs/integrate_gradients/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/integrate_gradients/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.ig),
        job=layer_job,
    script:
        "../workflow_scripts/integrate_gradients.py"


rule tabulate_attributions:
    input:
        **by_pair("ig", ig_file, IG_PAIRS),
        labels=table_file("feature_labels"),
    output:
        **by_layer("consistency", consistency_file, IG_LAYERS),
        concentration=table_file("ig_concentration"),
        concentration_mutants=table_file("ig_concentration_mutants"),
        universal=table_file("universal_features"),
    log:
        f"{OUTDIR}/logs/tabulate_attributions.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_attributions.tsv"
    localrule: True
    params:
        min_proteins=STUDY.min_proteins,
    script:
        "../workflow_scripts/tabulate_attributions.py"


rule tabulate_top_features:
    input:
        npz=ig_file("{protein}", "{layer}"),
        labels=table_file("feature_labels"),
    output:
        table=ig_file("{protein}", "{layer}", "_top.csv"),
    log:
        f"{OUTDIR}/logs/tabulate_top_features/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_top_features/{{protein}}_L{{layer}}.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_top_features.py"
