"""Rule dms_correlation: Spearman correlation of WT-marginal scores with DMS scores."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.correlate(dict(zip(smk.params.proteins, smk.input.scores, strict=True)), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
