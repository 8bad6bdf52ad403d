"""Rule correlate_dms: Spearman correlation of WT-marginal scores with DMS scores."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.scoring import correlate_dms


def main(smk):
    with log_to(smk.log[0]):
        correlate_dms(keyed(smk.input, "scores", ("protein",)), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
