"""Rule patch_features: patch every feature that matters, with controls, for one protein and layer."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.patch_layer(smk.params.config, smk.input.checkpoint, smk.wildcards.protein,
                             int(smk.wildcards.layer), smk.input.scores, smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
