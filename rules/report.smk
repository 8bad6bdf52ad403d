# Pages people open: the findings, every table rendered, and the study explorer.


rule tabulate_findings:
    input:
        unpack(findings_inputs),
        **by_pair("patching", patching_file, PATCH_PAIRS),
        **by_pair("ig", ig_file, IG_PAIRS),
        **by_pair("shares", graph_shares_file, GRAPH_PAIRS),
        concentration=table_file("ig_concentration_mutants"),
    output:
        table=table_file("findings"),
    log:
        f"{OUTDIR}/logs/tabulate_findings.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_findings.tsv"
    localrule: True
    params:
        settings=as_params(STUDY.findings),
        min_proteins=STUDY.min_proteins,
    script:
        "../workflow_scripts/tabulate_findings.py"


rule render_tables:
    input:
        **{key("table", name): table_file(name) for name in TABLE_NAMES},
    output:
        page=report(
            f"{OUTDIR}/report/tables.html",
            caption="report/tables.rst",
            category="Tables",
        ),
    log:
        f"{OUTDIR}/logs/render_tables.log",
    benchmark:
        f"{OUTDIR}/benchmarks/render_tables.tsv"
    localrule: True
    script:
        "../workflow_scripts/render_tables.py"


rule build_explorer:
    input:
        unpack(explorer_inputs),
        **by_protein("scores", scores_file),
        **by_pair("summary", position_summary_file, POSITION_PAIRS),
        **by_pair("top", top_features_file, IG_PAIRS),
        **by_layer("examples", examples_file, LAYERS),
        sizes=table_file("circuit_sizes"),
        labels=table_file("feature_labels"),
        concepts=table_file("feature_concepts"),
        findings=table_file("findings"),
    output:
        index=f"{OUTDIR}/explorer/index.html",
        data=f"{OUTDIR}/explorer/data.js",
    log:
        f"{OUTDIR}/logs/build_explorer.log",
    benchmark:
        f"{OUTDIR}/benchmarks/build_explorer.tsv"
    localrule: True
    params:
        layers=explorer_layers(),
    script:
        "../workflow_scripts/build_explorer.py"
