"""Rule tabulate_top_features: one protein's 20 largest |A_j| per mutant at one layer, with labels."""
from esmsae.pipeline.logs import log_to
from esmsae.tables.ig import tabulate_top_features


def main(smk):
    with log_to(smk.log[0]):
        tabulate_top_features(smk.input.npz, smk.input.labels, smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
