# Feature-set ablation against the assay (METHOD.md "Feature-set ablation against the assay").


rule ablate_feature_sets:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
        circuits=table_file("circuit_sizes"),
        universal=table_file("universal_features"),
        labels=table_file("feature_labels"),
        ig=ig_file("{protein}", "{layer}"),
    output:
        npz=ablation_file("{protein}", "{layer}"),
    log:
        f"{OUTDIR}/logs/ablate_feature_sets/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/ablate_feature_sets/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.ablation),
        job=layer_job,
    script:
        "../workflow_scripts/ablate_feature_sets.py"


rule tabulate_set_ablation:
    input:
        **by_pair("ablation", ablation_file, ABLATION_PAIRS),
    output:
        table=table_file("set_ablation"),
    log:
        f"{OUTDIR}/logs/tabulate_set_ablation.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_set_ablation.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_set_ablation.py"
