"""Rule sae_quality: how well each layer's SAE reconstructs the study's sequences."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.measure_sae_quality(smk.params.config, smk.input.checkpoint,
                                     dict(zip(smk.params.proteins, smk.input.scores, strict=True)), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
