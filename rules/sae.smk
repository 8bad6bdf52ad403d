# SAEs: trained here when sae.train is set (demo, unreleased layers), else read from sae.dir.
if STUDY.train:

    rule train_sae:
        input:
            checkpoint=STUDY.checkpoint,
        output:
            sae=SAE_FILE,
        log:
            f"{OUTDIR}/logs/train_sae/L{{layer}}.log",
        benchmark:
            f"{OUTDIR}/benchmarks/train_sae/L{{layer}}.tsv"
        threads: 2
        params:
            train=as_params(STUDY.train),
            wt_seqs=[STUDY.proteins[p].wt_seq for p in WHOLE_PROTEINS],
            k=layer_k,
            forward=as_params(STUDY.forward),
        script:
            "../workflow_scripts/train_sae.py"


rule measure_sae_quality:
    input:
        **by_protein("scores", scores_file),
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
    output:
        quality=quality_file("{layer}"),
        scores=quality_scores_file("{layer}"),
    log:
        f"{OUTDIR}/logs/measure_sae_quality/L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/measure_sae_quality/L{{layer}}.tsv"
    threads: 2
    params:
        wt_seqs={p: STUDY.proteins[p].wt_seq for p in PROTEINS},
        k=layer_k,
        forward=as_params(STUDY.forward),
    script:
        "../workflow_scripts/measure_sae_quality.py"


rule tabulate_sae_quality:
    input:
        **by_layer("quality", quality_file, LAYERS),
        **by_layer("scores", quality_scores_file, LAYERS),
    output:
        table=table_file("sae_quality"),
        task=table_file("sae_task_fidelity"),
    log:
        f"{OUTDIR}/logs/tabulate_sae_quality.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_sae_quality.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_sae_quality.py"
