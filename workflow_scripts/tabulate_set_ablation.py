"""Rule tabulate_set_ablation: every named set's effect on the assay's prediction, beside its nulls."""
from esmsae.pipeline.keys import PAIR, keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.ablation import tabulate_set_ablation


def main(smk):
    with log_to(smk.log[0]):
        tabulate_set_ablation(keyed(smk.input, "ablation", PAIR), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
