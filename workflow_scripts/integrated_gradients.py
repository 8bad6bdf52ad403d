"""Rule integrated_gradients: IG with an error node for one protein's mutants at one layer."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.ig_layer(smk.params.config, smk.input.checkpoint, smk.wildcards.protein, int(smk.wildcards.layer),
                          smk.input.scores, smk.output.npz, smk.output.top)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
