"""Rule tabulate_circuit_sizes: minimal circuit sizes of all proteins and layers in one table."""
from esmsae import reports
from esmsae.keys import keyed


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.circuit_sizes(keyed(smk.input, "sizes", ("protein", "layer")), smk.input.labels, smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
