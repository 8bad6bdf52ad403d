# The offline demo builds its own tiny ESM-2 (fair-esm format) where esm_checkpoint points.
if config.get("demo"):

    rule build_demo_model:
        output:
            checkpoint=config["esm_checkpoint"],
        params:
            spec=cfg.demo_settings(config),
        log:
            f"{OUTDIR}/logs/build_demo_model.log",
        benchmark:
            f"{OUTDIR}/benchmarks/build_demo_model.tsv"
        conda:
            ENV
        script:
            "../workflow_scripts/build_demo_model.py"
