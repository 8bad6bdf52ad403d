# WT-marginal scores of every mutant, the selection, and agreement with the DMS assays.


rule score_mutations:
    input:
        unpack(dms_assay),
        checkpoint=STUDY.checkpoint,
    output:
        scores=scores_file("{protein}"),
    params:
        protein=protein_params,
        precision=STUDY.precision,
    log:
        f"{OUTDIR}/logs/score_mutations/{{protein}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/score_mutations/{{protein}}.tsv"
    threads: 2
    conda:
        ENV
    script:
        "../workflow_scripts/score_mutations.py"


rule dms_correlation:
    input:
        scores=expand(scores_file("{protein}"), protein=DMS_PROTEINS),
    output:
        table=f"{OUTDIR}/tables/dms_correlation.csv",
    params:
        proteins=DMS_PROTEINS,
    log:
        f"{OUTDIR}/logs/dms_correlation.log",
    benchmark:
        f"{OUTDIR}/benchmarks/dms_correlation.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/dms_correlation.py"
