"""Rule score_mutations: WT-marginal scores of one protein's mutants, and the selection."""
from esmsae.analyses.scoring import score_mutations
from esmsae.config.parse import runtime
from esmsae.config.settings import Forward, Protein, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        score_mutations(from_params(Protein, smk.params.protein), from_params(Forward, smk.params.forward),
                        runtime(smk.config), smk.input.checkpoint, smk.input.get("assay"),
                        smk.output.scores)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
