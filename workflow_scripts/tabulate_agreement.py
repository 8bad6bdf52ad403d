"""Rule tabulate_agreement: do AtP and IG rank features the way exact patching does?"""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.agreement import tabulate_agreement

PAIR = ("protein", "layer")


def main(smk):
    with log_to(smk.log[0]):
        tabulate_agreement(keyed(smk.input, "patching", PAIR), keyed(smk.input, "ig", PAIR),
                           keyed(smk.input, "atp", PAIR), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
