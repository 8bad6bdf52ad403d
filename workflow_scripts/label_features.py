"""Rule label_features: statistics, output effect and a short label for every feature at every layer."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.labels import label_features


def main(smk):
    with log_to(smk.log[0]):
        label_features(keyed(smk.input, "activity", ("layer",)), keyed(smk.input, "effects", ("layer",)),
                       smk.params.identity_f1, smk.output.table, smk.input.concepts, smk.params.concept_f1)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
