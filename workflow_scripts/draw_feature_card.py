"""Rule draw_feature_card: one feature's card (activation by residue and along each WT, output effect, mutants)."""
from esmsae.figures.cards import draw_feature_card
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        draw_feature_card(int(smk.wildcards.layer), int(smk.wildcards.feature), smk.input.labels,
                          smk.input.activity, smk.input.effects, keyed(smk.input, "ig", ("protein",)),
                          smk.output.png, smk.output.pdf, smk.input.examples, smk.params.width)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
