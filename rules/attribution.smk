# Integrated gradients with an error node, and minimal circuits ranked by it.


rule integrated_gradients:
    input:
        checkpoint=config["esm_checkpoint"],
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        npz=ig_file("{protein}", "{layer}"),
        top=ig_file("{protein}", "{layer}", "_top.csv"),
    params:
        config=ig_settings,
    log:
        f"{OUTDIR}/logs/integrated_gradients/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/integrated_gradients/{{protein}}_L{{layer}}.tsv"
    threads: 2
    conda:
        ENV
    script:
        "../workflow_scripts/integrated_gradients.py"


rule find_circuits:
    input:
        checkpoint=config["esm_checkpoint"],
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
        npz=ig_file("{protein}", "{layer}"),
    output:
        curves=circuits_file("{protein}", "{layer}"),
        sizes=circuits_file("{protein}", "{layer}", "_sizes.csv"),
    params:
        config=circuit_settings,
    log:
        f"{OUTDIR}/logs/find_circuits/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/find_circuits/{{protein}}_L{{layer}}.tsv"
    threads: 2
    conda:
        ENV
    script:
        "../workflow_scripts/find_circuits.py"
