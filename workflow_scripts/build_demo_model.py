"""Rule build_demo_model: write a tiny random ESM-2 in fair-esm's checkpoint format."""
from esmsae.config.settings import DemoSettings, from_params
from esmsae.model.demo import build_demo_model
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        build_demo_model(from_params(DemoSettings, smk.params.demo), smk.output.checkpoint)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
