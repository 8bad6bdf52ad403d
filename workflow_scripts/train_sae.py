"""Rule train_sae: fit a TopK SAE to one layer's residual stream."""
from esmsae.config.parse import runtime
from esmsae.config.settings import Forward, TrainSettings, from_params
from esmsae.model.host import set_up_host
from esmsae.model.training import train_layer_sae
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        train_layer_sae(from_params(TrainSettings, smk.params.train), smk.params.wt_seqs,
                        int(smk.wildcards.layer), smk.params.k, from_params(Forward, smk.params.forward),
                        runtime(smk.config), smk.input.checkpoint, smk.output.sae)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
