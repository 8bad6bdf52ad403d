"""Rule build_demo_model: write a tiny random ESM-2 in fair-esm's checkpoint format."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.build_demo_model(smk.params.spec, smk.output.checkpoint)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
