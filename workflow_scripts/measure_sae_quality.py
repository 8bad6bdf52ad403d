"""Rule measure_sae_quality: how well each layer's SAE reconstructs the study's sequences."""
from esmsae.analyses.sae_quality import measure_sae_quality
from esmsae.config.parse import runtime
from esmsae.model.host import set_up_host
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        measure_sae_quality(smk.params.wt_seqs, keyed(smk.input, "sae", ("layer",)), smk.params.k,
                            smk.params.precision, runtime(smk.config), smk.input.checkpoint,
                            keyed(smk.input, "scores", ("protein",)), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
