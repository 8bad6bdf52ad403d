"""Rule tabulate_attributions: attribution concentration, feature consistency per layer, universal features."""
from esmsae import workflow
from esmsae.keys import keyed


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.ig_tables(keyed(smk.input, "ig", ("protein", "layer")), dict(smk.output.items()),
                           keyed(smk.output, "consistency", ("layer",)))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
