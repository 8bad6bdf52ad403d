"""Rule tabulate_agreement: do AtP and IG rank features the way exact patching does?"""
from esmsae import reports
from esmsae.keys import keyed

PAIR = ("protein", "layer")


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.agreement_tables(keyed(smk.input, "patching", PAIR), keyed(smk.input, "ig", PAIR),
                                 keyed(smk.input, "atp", PAIR), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
