"""Rule measure_sae_quality: how well each layer's SAE reconstructs the study's sequences."""
from esmsae import config, workflow
from esmsae.keys import keyed


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.measure_sae_quality(smk.params.wt_seqs, keyed(smk.input, "sae", ("layer",)), smk.params.k,
                                     smk.params.precision, config.runtime(smk.config), smk.input.checkpoint,
                                     keyed(smk.input, "scores", ("protein",)), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
