"""Rule tabulate_attributions: attribution concentration, feature consistency per layer, universal features."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.ig import tabulate_attributions


def main(smk):
    with log_to(smk.log[0]):
        tabulate_attributions(keyed(smk.input, "ig", ("protein", "layer")), smk.input.labels, dict(smk.output.items()),
                              keyed(smk.output, "consistency", ("layer",)), smk.params.min_proteins)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
