"""Rule integrated_gradients: IG with an error node for one protein's mutants at one layer."""
from esmsae import config, workflow
from esmsae.settings import IGSettings, LayerJob, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.ig_layer(from_params(IGSettings, smk.params.settings), from_params(LayerJob, smk.params.job),
                          config.runtime(smk.config), smk.input.checkpoint, smk.input.sae, smk.input.scores,
                          smk.output.npz, smk.output.top)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
