"""Rule tabulate_top_features: one protein's 20 largest |A_j| per mutant at one layer, with labels."""
from esmsae import reports


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.top_features_table(smk.input.npz, smk.input.labels, smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
