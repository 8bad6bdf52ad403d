# Activation patching of SAE features at the mutated site, per protein and layer.


rule patch_features:
    input:
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        table=patching_file("{protein}", "{layer}"),
    params:
        settings=as_params(STUDY.patching),
        job=layer_job,
    log:
        f"{OUTDIR}/logs/patch_features/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/patch_features/{{protein}}_L{{layer}}.tsv"
    threads: 2
    conda:
        ENV
    script:
        "../workflow_scripts/patch_features.py"


rule patching_tables:
    input:
        tables=patching_files(),
        scores=expand(scores_file("{protein}"), protein=PROTEINS),
    output:
        validation=f"{OUTDIR}/tables/control_validation.csv",
        progression=f"{OUTDIR}/tables/layer_progression.csv",
        top=f"{OUTDIR}/tables/top_mutations.csv",
    params:
        pairs=PATCH_PAIRS,
        proteins=PROTEINS,
        top_n=STUDY.top_n,
    log:
        f"{OUTDIR}/logs/patching_tables.log",
    benchmark:
        f"{OUTDIR}/benchmarks/patching_tables.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/patching_tables.py"


rule plot_layer_effects:
    input:
        validation=f"{OUTDIR}/tables/control_validation.csv",
    output:
        png=report(figure("layer_effects"), caption="report/layer_effects.rst", category="Activation patching"),
        pdf=figure("layer_effects", "pdf"),
    params:
        figure="layer_effects",
    log:
        f"{OUTDIR}/logs/figures/layer_effects.log",
    benchmark:
        f"{OUTDIR}/benchmarks/figures/layer_effects.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/plot_patching.py"


rule plot_controls:
    input:
        validation=f"{OUTDIR}/tables/control_validation.csv",
    output:
        png=report(figure("controls"), caption="report/controls.rst", category="Activation patching"),
        pdf=figure("controls", "pdf"),
    params:
        figure="controls",
    log:
        f"{OUTDIR}/logs/figures/controls.log",
    benchmark:
        f"{OUTDIR}/benchmarks/figures/controls.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/plot_patching.py"


rule plot_delta_vs_effect:
    input:
        tables=patching_files(),
    output:
        png=report(figure("delta_vs_effect"), caption="report/delta_vs_effect.rst", category="Activation patching"),
        pdf=figure("delta_vs_effect", "pdf"),
    params:
        figure="delta_vs_effect",
        pairs=PATCH_PAIRS,
    log:
        f"{OUTDIR}/logs/figures/delta_vs_effect.log",
    benchmark:
        f"{OUTDIR}/benchmarks/figures/delta_vs_effect.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/plot_patching.py"
