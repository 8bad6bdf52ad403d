# How the effect spreads over positions (METHOD.md "Spread over positions").


rule patch_positions:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        effects=positions_file("{protein}", "{layer}"),
        summary=positions_file("{protein}", "{layer}", "_summary.csv"),
    log:
        f"{OUTDIR}/logs/patch_positions/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/patch_positions/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.positions),
        job=layer_job,
    script:
        "../workflow_scripts/patch_positions.py"


rule tabulate_site_share:
    input:
        **by_pair("summary", position_summary_file, POSITION_PAIRS),
    output:
        table=table_file("site_share"),
    log:
        f"{OUTDIR}/logs/tabulate_site_share.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_site_share.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_site_share.py"
