# Minimal circuits: the top features by |IG attribution| patched together, and their sizes.


rule find_circuits:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
        npz=ig_file("{protein}", "{layer}"),
    output:
        curves=circuits_file("{protein}", "{layer}"),
    log:
        f"{OUTDIR}/logs/find_circuits/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/find_circuits/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.circuits),
        job=layer_job,
    script:
        "../workflow_scripts/find_circuits.py"


rule tabulate_circuit_sizes:
    input:
        **by_pair("curves", circuits_file, IG_PAIRS),
        labels=table_file("feature_labels"),
    output:
        table=table_file("circuit_sizes"),
    log:
        f"{OUTDIR}/logs/tabulate_circuit_sizes.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_circuit_sizes.tsv"
    localrule: True
    params:
        settings=as_params(STUDY.circuit_sizes),
    script:
        "../workflow_scripts/tabulate_circuit_sizes.py"
