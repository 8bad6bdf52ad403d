# Cheap vs exact attribution: AtP, and how well it and IG rank features against exact patching.


rule compute_atp:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        npz=atp_file("{protein}", "{layer}"),
    log:
        f"{OUTDIR}/logs/compute_atp/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/compute_atp/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.ig),
        job=layer_job,
    script:
        "../workflow_scripts/compute_atp.py"


rule tabulate_agreement:
    input:
        **by_pair("patching", patching_file, AGREEMENT_PAIRS),
        **by_pair("ig", ig_file, AGREEMENT_PAIRS),
        **by_pair("atp", atp_file, AGREEMENT_PAIRS),
    output:
        table=table_file("attribution_agreement"),
        mutants=table_file("attribution_agreement_mutants"),
    log:
        f"{OUTDIR}/logs/tabulate_agreement.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_agreement.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_agreement.py"
