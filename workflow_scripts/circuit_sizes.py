"""Rule circuit_sizes: minimal circuit sizes of all proteins and layers in one table."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.circuit_sizes(list(smk.input.sizes), smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
