"""Rule tabulate_concepts: every feature's precision, recall and F1 against each biological concept."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.concepts import tabulate_concepts


def main(smk):
    with log_to(smk.log[0]):
        tabulate_concepts(keyed(smk.input, "activity", ("layer",)), smk.params.proteins,
                          keyed(smk.input, "annotations", ("protein",)), keyed(smk.input, "scores", ("protein",)),
                          smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
