"""Rule select_features: the features the tables and figures show, and which get a card."""
from esmsae.config.settings import CircuitSizeSettings, from_params
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.shown_features import select_features

PAIR = ("protein", "layer")


def main(smk):
    with log_to(smk.log[0]):
        select_features(keyed(smk.input, "ig", PAIR), keyed(smk.input, "patching", PAIR),
                        keyed(smk.input, "curves", PAIR), from_params(CircuitSizeSettings, smk.params.sizes),
                        smk.params.max_cards, smk.output.shown, smk.params.min_proteins)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
