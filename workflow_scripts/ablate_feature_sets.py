"""Rule ablate_feature_sets: the named feature sets and their nulls ablated, every single rescored."""
from esmsae.analyses.ablation import ABLATION
from esmsae.analyses.job import run_analysis
from esmsae.config.parse import runtime
from esmsae.config.settings import LayerJob, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        run_analysis(ABLATION, from_params(ABLATION.settings, smk.params.settings),
                     from_params(LayerJob, smk.params.job), runtime(smk.config), dict(smk.input.items()),
                     dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
