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
            wt_seqs=[STUDY.proteins[p].wt_seq for p in PROTEINS],
            k=layer_k,
            precision=STUDY.precision,
        script:
            "../workflow_scripts/train_sae.py"


rule measure_sae_quality:
    input:
        **by_layer("sae", sae_file, LAYERS),
        **by_protein("scores", scores_file),
        checkpoint=STUDY.checkpoint,
    output:
        table=table_file("sae_quality"),
    log:
        f"{OUTDIR}/logs/measure_sae_quality.log",
    benchmark:
        f"{OUTDIR}/benchmarks/measure_sae_quality.tsv"
    threads: 2
    params:
        wt_seqs={p: STUDY.proteins[p].wt_seq for p in PROTEINS},
        k=STUDY.sae_k,
        precision=STUDY.precision,
    script:
        "../workflow_scripts/measure_sae_quality.py"
