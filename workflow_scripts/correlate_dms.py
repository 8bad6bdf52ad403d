"""Rule correlate_dms: Spearman correlation of WT-marginal scores with DMS scores."""
from esmsae import reports
from esmsae.keys import keyed


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.correlate(keyed(smk.input, "scores", ("protein",)), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
