"""Rule compute_atp: AtP, the first-order estimate of every feature's effect, for one protein's mutants at one layer."""
from esmsae import config, workflow
from esmsae.atp import ATP
from esmsae.settings import LayerJob, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.run_analysis(ATP, from_params(ATP.settings, smk.params.settings),
                              from_params(LayerJob, smk.params.job), config.runtime(smk.config),
                              dict(smk.input.items()), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
