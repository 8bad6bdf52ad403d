"""Rule tabulate_identity_share: how much attribution the residue-identity features carry."""
from esmsae import reports
from esmsae.keys import keyed


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.identity_share_tables(smk.input.labels, keyed(smk.input, "ig", ("protein", "layer")),
                                       dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
