"""Rule assemble_graphs: one protein's per-mutant graphs (JSON, GraphML) and their aggregate."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.graph import assemble_graphs


def main(smk):
    with log_to(smk.log[0]):
        assemble_graphs(smk.wildcards.protein, keyed(smk.input, "nodes", ("layer",)),
                        keyed(smk.input, "edges", ("layer",)), smk.input.labels, smk.params.top_edges,
                        smk.output.graphs, smk.output.aggregate, smk.output.graphml)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
