"""Rule tabulate_attributions: attribution concentration, feature consistency per layer, universal features."""
from esmsae import reports
from esmsae.keys import keyed


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.ig_tables(keyed(smk.input, "ig", ("protein", "layer")), smk.input.labels, dict(smk.output.items()),
                           keyed(smk.output, "consistency", ("layer",)))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
