"""Rule train_sae: fit a TopK SAE to one layer's residual stream."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.train_layer_sae(smk.params.config, smk.input.checkpoint, int(smk.wildcards.layer),
                                 smk.output.sae)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
