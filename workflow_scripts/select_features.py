"""Rule select_features: the features the tables and figures show, and which get a card."""
from esmsae import reports
from esmsae.keys import keyed
from esmsae.settings import CircuitSizeSettings, from_params

PAIR = ("protein", "layer")


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.select_features(keyed(smk.input, "ig", PAIR), keyed(smk.input, "patching", PAIR),
                                 keyed(smk.input, "curves", PAIR), from_params(CircuitSizeSettings, smk.params.sizes),
                                 smk.params.max_cards, smk.output.shown)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
