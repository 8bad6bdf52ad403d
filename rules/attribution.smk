# Integrated gradients with an error node, and minimal circuits ranked by it.


rule integrate_gradients:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        npz=ig_file("{protein}", "{layer}"),
    log:
        f"{OUTDIR}/logs/integrate_gradients/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/integrate_gradients/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=as_params(STUDY.ig),
        job=layer_job,
    script:
        "../workflow_scripts/integrate_gradients.py"


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


rule tabulate_attributions:
    input:
        **by_pair("ig", ig_file, IG_PAIRS),
        labels=table_file("feature_labels"),
    output:
        **by_layer("consistency", consistency_file, IG_LAYERS),
        concentration=table_file("ig_concentration"),
        concentration_mutants=table_file("ig_concentration_mutants"),
        universal=table_file("universal_features"),
    log:
        f"{OUTDIR}/logs/tabulate_attributions.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_attributions.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_attributions.py"
