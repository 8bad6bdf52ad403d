"""Rule label_features: statistics, output effect and a short label for every feature at every layer."""
from esmsae import reports
from esmsae.keys import keyed


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.label_features(keyed(smk.input, "activity", ("layer",)), keyed(smk.input, "effects", ("layer",)),
                                smk.params.identity_f1, smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
