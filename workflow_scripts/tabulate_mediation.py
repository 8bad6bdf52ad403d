"""Rule tabulate_mediation: mediated shares by layer pair, and how well AtP ranked the edges."""
from esmsae import reports
from esmsae.keys import keyed

PAIR = ("protein", "layer")


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.mediation_tables(keyed(smk.input, "shares", PAIR), keyed(smk.input, "edges", PAIR), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
