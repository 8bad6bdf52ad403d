# SAEs: trained here when sae.train is set (demo, unreleased layers), else read from sae.dir.
if STUDY.train:

    rule train_sae:
        input:
            checkpoint=STUDY.checkpoint,
        output:
            sae=SAE_FILE,
        params:
            train=as_params(STUDY.train),
            wt_seqs=[STUDY.proteins[p].wt_seq for p in PROTEINS],
            k=layer_k,
            precision=STUDY.precision,
        log:
            f"{OUTDIR}/logs/train_sae/L{{layer}}.log",
        benchmark:
            f"{OUTDIR}/benchmarks/train_sae/L{{layer}}.tsv"
        threads: 2
        conda:
            ENV
        script:
            "../workflow_scripts/train_sae.py"


rule sae_quality:
    input:
        checkpoint=STUDY.checkpoint,
        saes=expand(SAE_FILE, layer=LAYERS),
        scores=expand(scores_file("{protein}"), protein=PROTEINS),
    output:
        table=f"{OUTDIR}/tables/sae_quality.csv",
    params:
        wt_seqs={p: STUDY.proteins[p].wt_seq for p in PROTEINS},
        k=STUDY.sae_k,
        precision=STUDY.precision,
        layers=LAYERS,
    log:
        f"{OUTDIR}/logs/sae_quality.log",
    benchmark:
        f"{OUTDIR}/benchmarks/sae_quality.tsv"
    threads: 2
    conda:
        ENV
    script:
        "../workflow_scripts/sae_quality.py"
