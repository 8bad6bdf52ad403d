"""Rule train_sae: fit a TopK SAE to one layer's residual stream."""
from esmsae import config, workflow
from esmsae.settings import TrainSettings, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.train_layer_sae(from_params(TrainSettings, smk.params.train), smk.params.wt_seqs,
                                 int(smk.wildcards.layer), smk.params.k, smk.params.precision,
                                 config.runtime(smk.config), smk.input.checkpoint, smk.output.sae)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
