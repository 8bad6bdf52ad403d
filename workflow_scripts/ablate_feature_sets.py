"""Rule ablate_feature_sets: at each ablation layer, the named feature sets and their nulls ablated, every
single rescored (one job per protein; each layer its own resumable piece and output)."""
from esmsae.analyses.ablation import ABLATION
from esmsae.analyses.job import run_analysis
from esmsae.config.parse import runtime
from esmsae.config.settings import LayerJob, from_params
from esmsae.model.host import set_up_host
from esmsae.pipeline.keys import key
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        set_up_host(smk.threads)
        settings, run = from_params(ABLATION.settings, smk.params.settings), runtime(smk.config)
        named, outputs = dict(smk.input.items()), dict(smk.output.items())
        shared = {name: named[name] for name in ("checkpoint", "scores", "circuits", "universal", "labels")}
        for layer, job in sorted(smk.params.jobs.items(), key=lambda kv: int(kv[0])):
            inputs = shared | {"sae": named[key("sae", layer)], "ig": named[key("ig", layer)]}
            run_analysis(ABLATION, settings, from_params(LayerJob, job), run, inputs,
                         {"npz": outputs[key("npz", layer)]})


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
