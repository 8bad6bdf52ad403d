"""Rule patch_features: patch every feature that matters, with controls, for one protein and layer."""
from esmsae.analyses.job import run_analysis
from esmsae.analyses.patching import PATCHING
from esmsae.config.parse import runtime
from esmsae.config.settings import LayerJob, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        run_analysis(PATCHING, from_params(PATCHING.settings, smk.params.settings),
                     from_params(LayerJob, smk.params.job), runtime(smk.config),
                     dict(smk.input.items()), dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
