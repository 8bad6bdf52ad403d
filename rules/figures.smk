# Figures: one rule per entry of FIGURES (rules/common.smk), each its own target and report entry.
for name, spec in FIGURES.items():

    rule:
        name:
            f"plot_{name}"
        input:
            **spec["input"],
        output:
            png=report(
                figure_file(name),
                caption=f"report/{spec.get('caption', name)}.rst",
                category=spec["category"],
                subcategory=spec.get("subcategory"),
            ),
            pdf=figure_file(name, "pdf"),
        log:
            f"{OUTDIR}/logs/figures/{name}.log",
        benchmark:
            f"{OUTDIR}/benchmarks/figures/{name}.tsv"
        localrule: True
        params:
            figure=spec.get("draw", name),
            options=spec.get("options", {}) | {"activations": STUDY.forward.activations},
        script:
            "../workflow_scripts/plot_figure.py"
