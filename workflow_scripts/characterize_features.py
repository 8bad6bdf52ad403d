"""Rule characterize_features: every feature's activity over the reference positions at one layer."""
from esmsae.analyses.feature_activity import characterize_features
from esmsae.config.parse import runtime
from esmsae.config.settings import ActivitySettings, Forward, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        characterize_features(from_params(ActivitySettings, smk.params.settings), smk.params.wt_seqs,
                              int(smk.wildcards.layer), smk.params.k, from_params(Forward, smk.params.forward),
                              runtime(smk.config), smk.input.checkpoint, smk.input.sae,
                              smk.input.get("reference"), smk.output.activity,
                              smk.output.examples)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
