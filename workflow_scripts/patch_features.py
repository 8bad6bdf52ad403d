"""Rule patch_features: patch every feature that matters, with controls, for one protein and layer."""
from esmsae import config, workflow
from esmsae.settings import LayerJob, PatchSettings, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.set_up_host(smk.threads)
        workflow.patch_layer(from_params(PatchSettings, smk.params.settings), from_params(LayerJob, smk.params.job),
                             config.runtime(smk.config), smk.input.checkpoint, smk.input.sae, smk.input.scores,
                             smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
