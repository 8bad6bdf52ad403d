"""Rule characterize_features: every feature's activity over the reference positions at one layer."""
from esmsae import config, workflow
from esmsae.settings import FeatureSettings, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.characterize_layer(from_params(FeatureSettings, smk.params.settings), smk.params.wt_seqs,
                                    int(smk.wildcards.layer), smk.params.k, smk.params.precision,
                                    config.runtime(smk.config), smk.input.checkpoint, smk.input.sae,
                                    smk.input.get("reference"), smk.output.activity)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
