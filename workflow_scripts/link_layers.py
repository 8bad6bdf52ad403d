"""Rule link_layers: each mutant's feature graph between one layer and the next graph layer."""
from esmsae import config, workflow
from esmsae.graph import GRAPH
from esmsae.settings import LayerJob, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.run_analysis(GRAPH, from_params(GRAPH.settings, smk.params.settings),
                              from_params(LayerJob, smk.params.job), config.runtime(smk.config),
                              dict(smk.input.items()), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
