# WT-marginal scores of every mutant, the selection, and agreement with the DMS assays.


rule score_mutations:
    input:
        unpack(dms_assay),
        checkpoint=STUDY.checkpoint,
    output:
        scores=scores_file("{protein}"),
    log:
        f"{OUTDIR}/logs/score_mutations/{{protein}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/score_mutations/{{protein}}.tsv"
    threads: 2
    params:
        protein=protein_params,
        forward=as_params(STUDY.forward),
    script:
        "../workflow_scripts/score_mutations.py"


rule correlate_dms:
    input:
        **by_protein("scores", scores_file, DMS_PROTEINS),
    output:
        table=table_file("dms_correlation"),
    log:
        f"{OUTDIR}/logs/correlate_dms.log",
    benchmark:
        f"{OUTDIR}/benchmarks/correlate_dms.tsv"
    localrule: True
    script:
        "../workflow_scripts/correlate_dms.py"
