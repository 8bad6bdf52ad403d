"""Rule tabulate_site_share: how much of the effect at each layer sits at the mutated site."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.positions import tabulate_site_share


def main(smk):
    with log_to(smk.log[0]):
        tabulate_site_share(keyed(smk.input, "summary", ("protein", "layer")), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
