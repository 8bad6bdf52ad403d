"""Rule measure_output_effects: the shown features' output effects on the 20 amino acids at one layer."""
from esmsae.analyses.output_effects import measure_output_effects
from esmsae.config.parse import runtime
from esmsae.config.settings import Forward, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        measure_output_effects(smk.params.max_positions, smk.params.wt_seqs,
                               int(smk.wildcards.layer), smk.params.k, from_params(Forward, smk.params.forward),
                               runtime(smk.config), smk.input.checkpoint, smk.input.sae,
                               smk.input.shown, smk.output.effects)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
