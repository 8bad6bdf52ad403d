# Activation patching of SAE features at the mutated site, per protein and layer.


rule patch_features:
    input:
        checkpoint=config["esm_checkpoint"],
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        table=patching_file("{protein}", "{layer}"),
    params:
        config=patch_settings,
    log:
        f"{OUTDIR}/logs/patch_features/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/patch_features/{{protein}}_L{{layer}}.tsv"
    threads: 2
    conda:
        ENV
    script:
        "../workflow_scripts/patch_features.py"
