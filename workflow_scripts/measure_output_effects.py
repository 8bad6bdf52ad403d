"""Rule measure_output_effects: the shown features' output effects on the 20 amino acids at one layer."""
from esmsae import config, workflow
from esmsae.settings import FeatureSettings, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.measure_output_effects(from_params(FeatureSettings, smk.params.settings), smk.params.wt_seqs,
                                        int(smk.wildcards.layer), smk.params.k, smk.params.precision,
                                        config.runtime(smk.config), smk.input.checkpoint, smk.input.sae,
                                        smk.input.shown, smk.output.effects)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
