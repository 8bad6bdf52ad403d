"""Rule tabulate_site_share: how much of the effect at each layer sits at the mutated site."""
from esmsae import reports
from esmsae.keys import keyed


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.site_share_tables(keyed(smk.input, "summary", ("protein", "layer")), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
