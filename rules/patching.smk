# Activation patching of SAE features at the mutated site, per protein and layer.


rule patch_features:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        table=patching_file("{protein}", "{layer}"),
    log:
        f"{OUTDIR}/logs/patch_features/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/patch_features/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.patching),
        job=layer_job,
    script:
        "../workflow_scripts/patch_features.py"


rule tabulate_patching:
    input:
        **by_pair("patching", patching_file, PATCH_PAIRS),
        **by_protein("scores", scores_file),
        labels=table_file("feature_labels"),
    output:
        validation=table_file("control_validation"),
        progression=table_file("layer_progression"),
        top=table_file("top_mutations"),
    log:
        f"{OUTDIR}/logs/tabulate_patching.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_patching.tsv"
    localrule: True
    params:
        top_n=STUDY.top_n,
    script:
        "../workflow_scripts/tabulate_patching.py"
