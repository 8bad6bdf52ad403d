"""Rule score_mutations: WT-marginal scores of one protein's mutants, and the selection."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.score_protein(smk.params.config, smk.input.checkpoint, smk.wildcards.protein,
                               smk.output.scores)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
