"""Rule correlate_dms: Spearman correlation of WT-marginal scores with DMS scores."""
from esmsae import workflow
from esmsae.keys import keyed


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.correlate(keyed(smk.input, "scores", ("protein",)), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
