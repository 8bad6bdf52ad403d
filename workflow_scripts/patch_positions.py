"""Rule patch_positions: every position's effect of the mutant's representation, one protein at one layer."""
from esmsae import config, workflow
from esmsae.positions import POSITIONS
from esmsae.settings import LayerJob, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.run_analysis(POSITIONS, from_params(POSITIONS.settings, smk.params.settings),
                              from_params(LayerJob, smk.params.job), config.runtime(smk.config),
                              dict(smk.input.items()), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
