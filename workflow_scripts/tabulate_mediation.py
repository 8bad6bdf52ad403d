"""Rule tabulate_mediation: mediated shares by layer pair, and how well AtP ranked the edges."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.graph import tabulate_mediation

PAIR = ("protein", "layer")


def main(smk):
    with log_to(smk.log[0]):
        tabulate_mediation(keyed(smk.input, "shares", PAIR), keyed(smk.input, "edges", PAIR), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
