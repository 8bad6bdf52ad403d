# Integrated gradients with an error node, and minimal circuits ranked by it.


rule integrated_gradients:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        npz=ig_file("{protein}", "{layer}"),
        top=ig_file("{protein}", "{layer}", "_top.csv"),
    params:
        settings=as_params(STUDY.ig),
        job=layer_job,
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
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
        npz=ig_file("{protein}", "{layer}"),
    output:
        curves=circuits_file("{protein}", "{layer}"),
        sizes=circuits_file("{protein}", "{layer}", "_sizes.csv"),
    params:
        settings=as_params(STUDY.circuits),
        job=layer_job,
    log:
        f"{OUTDIR}/logs/find_circuits/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/find_circuits/{{protein}}_L{{layer}}.tsv"
    threads: 2
    conda:
        ENV
    script:
        "../workflow_scripts/find_circuits.py"


rule circuit_sizes:
    input:
        sizes=[circuits_file(p, layer, "_sizes.csv") for p, layer in IG_PAIRS],
    output:
        table=f"{OUTDIR}/tables/circuit_sizes.csv",
    log:
        f"{OUTDIR}/logs/circuit_sizes.log",
    benchmark:
        f"{OUTDIR}/benchmarks/circuit_sizes.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/circuit_sizes.py"


rule ig_tables:
    input:
        npz=[ig_file(p, layer) for p, layer in IG_PAIRS],
    output:
        concentration=f"{OUTDIR}/tables/ig_concentration.csv",
        universal=f"{OUTDIR}/tables/universal_features.csv",
        consistency=expand(f"{OUTDIR}/tables/feature_consistency_L{{layer}}.csv", layer=IG_LAYERS),
    params:
        pairs=IG_PAIRS,
        layers=IG_LAYERS,
    log:
        f"{OUTDIR}/logs/ig_tables.log",
    benchmark:
        f"{OUTDIR}/benchmarks/ig_tables.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/ig_tables.py"


rule plot_ig_concentration:
    input:
        npz=[ig_file(p, layer) for p, layer in IG_PAIRS],
    output:
        png=report(figure("ig_concentration"), caption="report/ig_concentration.rst", category="Attribution"),
        pdf=figure("ig_concentration", "pdf"),
    params:
        figure="ig_concentration",
        pairs=IG_PAIRS,
    log:
        f"{OUTDIR}/logs/figures/ig_concentration.log",
    benchmark:
        f"{OUTDIR}/benchmarks/figures/ig_concentration.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/plot_attribution.py"


rule plot_universal_features:
    input:
        npz=[ig_file(p, layer) for p, layer in IG_PAIRS],
    output:
        png=report(figure("universal_features"), caption="report/universal_features.rst", category="Attribution"),
        pdf=figure("universal_features", "pdf"),
    params:
        figure="universal_features",
        pairs=IG_PAIRS,
    log:
        f"{OUTDIR}/logs/figures/universal_features.log",
    benchmark:
        f"{OUTDIR}/benchmarks/figures/universal_features.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/plot_attribution.py"


rule plot_circuit_faithfulness:
    input:
        curves=[circuits_file(p, layer) for p, layer in IG_PAIRS],
    output:
        png=report(figure("circuit_faithfulness"), caption="report/circuit_faithfulness.rst", category="Circuits"),
        pdf=figure("circuit_faithfulness", "pdf"),
    params:
        figure="circuit_faithfulness",
        pairs=IG_PAIRS,
        recover=STUDY.circuits.recover,
    log:
        f"{OUTDIR}/logs/figures/circuit_faithfulness.log",
    benchmark:
        f"{OUTDIR}/benchmarks/figures/circuit_faithfulness.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/plot_attribution.py"


rule plot_minimal_circuit_sizes:
    input:
        sizes=f"{OUTDIR}/tables/circuit_sizes.csv",
    output:
        png=report(figure("minimal_circuit_sizes"), caption="report/minimal_circuit_sizes.rst", category="Circuits"),
        pdf=figure("minimal_circuit_sizes", "pdf"),
    params:
        figure="minimal_circuit_sizes",
        pairs=IG_PAIRS,
        max_k=STUDY.circuits.max_k,
    log:
        f"{OUTDIR}/logs/figures/minimal_circuit_sizes.log",
    benchmark:
        f"{OUTDIR}/benchmarks/figures/minimal_circuit_sizes.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/plot_attribution.py"
