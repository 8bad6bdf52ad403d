"""Rule tabulate_circuit_sizes: minimal circuit sizes of all proteins and layers in one table."""
from esmsae import reports
from esmsae.keys import keyed
from esmsae.settings import CircuitSizeSettings, from_params


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.circuit_sizes(keyed(smk.input, "curves", ("protein", "layer")),
                              from_params(CircuitSizeSettings, smk.params.settings), smk.input.labels,
                              smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
