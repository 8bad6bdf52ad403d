# Cross-layer feature graphs (METHOD.md "Cross-layer feature graph").


rule link_layers:
    input:
        unpack(downstream_sae),
        checkpoint=STUDY.checkpoint,
        sae=SAE_FILE,
        scores=scores_file("{protein}"),
    output:
        nodes=graph_pair_file("{protein}", "{layer}", "nodes"),
        edges=graph_pair_file("{protein}", "{layer}", "edges"),
        shares=graph_pair_file("{protein}", "{layer}", "shares"),
    log:
        f"{OUTDIR}/logs/link_layers/{{protein}}_L{{layer}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/link_layers/{{protein}}_L{{layer}}.tsv"
    threads: 2
    params:
        settings=pair_params,
        job=layer_job,
    script:
        "../workflow_scripts/link_layers.py"


rule assemble_graphs:
    input:
        unpack(graph_pair_inputs),
        labels=table_file("feature_labels"),
    output:
        graphs=report(
            directory(f"{OUTDIR}/graph/{{protein}}"),
            patterns=["{name}.json", "{name}.graphml"],
            caption="report/mutant_graphs.rst",
            category="Feature graphs",
            subcategory="{protein}: per mutant",
        ),
        aggregate=report(
            f"{OUTDIR}/graph/{{protein}}_aggregate.csv",
            caption="report/graph_aggregate.rst",
            category="Feature graphs",
            subcategory="{protein}",
        ),
        graphml=report(
            f"{OUTDIR}/graph/{{protein}}_aggregate.graphml",
            caption="report/graph_aggregate.rst",
            category="Feature graphs",
            subcategory="{protein}",
        ),
    log:
        f"{OUTDIR}/logs/assemble_graphs/{{protein}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/assemble_graphs/{{protein}}.tsv"
    localrule: True
    params:
        top_edges=STUDY.graph.top_edges,
    script:
        "../workflow_scripts/assemble_graphs.py"


rule tabulate_mediation:
    input:
        **by_pair("shares", graph_shares_file, GRAPH_PAIRS),
        **by_pair("edges", graph_edges_file, GRAPH_PAIRS),
    output:
        table=report(
            table_file("mediated_shares"),
            caption="report/mediated_shares.rst",
            category="Feature graphs",
            subcategory="all proteins",
        ),
    log:
        f"{OUTDIR}/logs/tabulate_mediation.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_mediation.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_mediation.py"
