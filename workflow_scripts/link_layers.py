"""Rule link_layers: each mutant's feature graph between one layer and the next graph layer."""
from esmsae.analyses.graph import GRAPH
from esmsae.analyses.job import run_analysis
from esmsae.config.parse import runtime
from esmsae.config.settings import LayerJob, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        run_analysis(GRAPH, from_params(GRAPH.settings, smk.params.settings),
                     from_params(LayerJob, smk.params.job), runtime(smk.config),
                     dict(smk.input.items()), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
