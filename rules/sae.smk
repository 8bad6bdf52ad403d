# SAEs: trained here when sae.train is set (demo, unreleased layers), else read from sae.dir.
if config["sae"].get("train"):

    rule train_sae:
        input:
            checkpoint=config["esm_checkpoint"],
        output:
            sae=SAE_FILE,
        params:
            config=settings("sae", proteins=PROTEINS),
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
        checkpoint=config["esm_checkpoint"],
        saes=expand(SAE_FILE, layer=LAYERS),
        scores=expand(scores_file("{protein}"), protein=PROTEINS),
    output:
        table=f"{OUTDIR}/tables/sae_quality.csv",
    params:
        config=settings("sae", "patching", "ig", proteins=PROTEINS),
        proteins=PROTEINS,
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
