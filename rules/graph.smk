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
        graphs=directory(f"{OUTDIR}/graph/{{protein}}"),
        aggregate=f"{OUTDIR}/graph/{{protein}}_aggregate.csv",
        graphml=f"{OUTDIR}/graph/{{protein}}_aggregate.graphml",
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
        table=table_file("mediated_shares"),
    log:
        f"{OUTDIR}/logs/tabulate_mediation.log",
    benchmark:
        f"{OUTDIR}/benchmarks/tabulate_mediation.tsv"
    localrule: True
    script:
        "../workflow_scripts/tabulate_mediation.py"
