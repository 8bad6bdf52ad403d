"""Rule measure_sae_quality: how faithful one layer's SAE is, to the model and to the assay, on both forwards."""
from esmsae.analyses.sae_quality import measure_sae_quality
from esmsae.config.parse import runtime
from esmsae.config.settings import Forward, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        measure_sae_quality(smk.params.wt_seqs, int(smk.wildcards.layer), smk.params.k,
                            from_params(Forward, smk.params.forward), runtime(smk.config), smk.input.checkpoint,
                            smk.input.sae, keyed(smk.input, "scores", ("protein",)), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
