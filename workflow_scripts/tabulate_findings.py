"""Rule tabulate_findings: each headline claim beside its null, with a verdict."""
from esmsae.config.settings import FindingsSettings, from_params
from esmsae.pipeline.keys import PAIR, keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.findings import tabulate_findings


def main(smk):
    with log_to(smk.log[0]):
        settings = from_params(FindingsSettings, smk.params.settings)
        tabulate_findings(keyed(smk.input, "patching", PAIR), smk.input.concentration, keyed(smk.input, "ig", PAIR),
                          keyed(smk.input, "shares", PAIR), smk.input.get("ablation"), settings.n_null,
                          settings.seed, settings.alpha, smk.output.table, smk.params.min_proteins)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
