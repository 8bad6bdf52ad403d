"""Rule sae_quality: how well each layer's SAE reconstructs the study's sequences."""
from esmsae import config, workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        wt_seqs = smk.params.wt_seqs
        workflow.measure_sae_quality(wt_seqs, dict(zip(smk.params.layers, smk.input.saes, strict=True)),
                                     smk.params.k, smk.params.precision, config.runtime(smk.config),
                                     smk.input.checkpoint, dict(zip(wt_seqs, smk.input.scores, strict=True)),
                                     smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
