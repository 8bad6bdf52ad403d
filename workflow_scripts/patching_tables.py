"""Rule patching_tables: control validation, layer progression and top mutations."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.patching_tables(smk.params.pairs, list(smk.input.tables),
                                 dict(zip(smk.params.proteins, smk.input.scores, strict=True)), smk.params.top_n,
                                 {"validation": smk.output.validation, "progression": smk.output.progression,
                                  "top": smk.output.top})


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
