"""Rule find_circuits: recovered fraction vs circuit size for one protein's mutants at one layer."""
from esmsae import config, workflow
from esmsae.settings import CircuitSettings, LayerJob, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.circuits_layer(from_params(CircuitSettings, smk.params.settings),
                                from_params(LayerJob, smk.params.job), config.runtime(smk.config),
                                smk.input.checkpoint, smk.input.sae, smk.input.scores, smk.input.npz,
                                smk.output.curves, smk.output.sizes)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
