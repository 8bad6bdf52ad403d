"""Rule build_demo_model: write a tiny random ESM-2 in fair-esm's checkpoint format."""
from esmsae import workflow
from esmsae.settings import DemoSettings, from_params


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.build_demo_model(from_params(DemoSettings, smk.params.demo), smk.output.checkpoint)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
