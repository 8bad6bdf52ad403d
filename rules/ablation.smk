# Feature-set ablation against the assay (METHOD.md "Feature-set ablation against the assay").


# One job per protein for every ablation layer (each layer its own resumable piece and output): the jobs wait
# for the labels, made from every protein, so they cannot join the protein's group job, and a group of its
# own would cost the cluster dry run a minute at ProteinGym scale (Snakemake checks every group member's
# ancestry, here the whole DAG).
if STUDY.ablation_layers:

    rule ablate_feature_sets:
        input:
            unpack(ablation_inputs),
            checkpoint=STUDY.checkpoint,
            scores=scores_file("{protein}"),
            circuits=table_file("circuit_sizes"),
            universal=table_file("universal_features"),
            labels=table_file("feature_labels"),
        output:
            **by_layer(
                "npz",
                lambda layer: ablation_file("{protein}", layer),
                STUDY.ablation_layers,
            ),
        log:
            f"{OUTDIR}/logs/ablate_feature_sets/{{protein}}.log",
        benchmark:
            f"{OUTDIR}/benchmarks/ablate_feature_sets/{{protein}}.tsv"
        threads: 2
        params:
            settings=as_params(STUDY.ablation),
            jobs=ablation_jobs,
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
