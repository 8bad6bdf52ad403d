# The offline demo builds its own tiny ESM-2 (fair-esm format) where esm_checkpoint points.
if STUDY.demo:

    rule build_demo_model:
        output:
            checkpoint=STUDY.checkpoint,
        log:
            f"{OUTDIR}/logs/build_demo_model.log",
        benchmark:
            f"{OUTDIR}/benchmarks/build_demo_model.tsv"
        params:
            demo=as_params(STUDY.demo),
        script:
            "../workflow_scripts/build_demo_model.py"
