"""Rule score_mutations: WT-marginal scores of one protein's mutants, and the selection."""
from esmsae import config, workflow
from esmsae.settings import Protein, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.score_protein(from_params(Protein, smk.params.protein), smk.params.precision,
                               config.runtime(smk.config), smk.input.checkpoint, smk.input.get("assay"),
                               smk.output.scores)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
