"""Rule tabulate_circuit_sizes: minimal circuit sizes of all proteins and layers in one table."""
from esmsae.config.settings import CircuitSizeSettings, from_params
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.circuits import tabulate_circuit_sizes


def main(smk):
    with log_to(smk.log[0]):
        tabulate_circuit_sizes(keyed(smk.input, "curves", ("protein", "layer")),
                               from_params(CircuitSizeSettings, smk.params.settings), smk.input.labels,
                               smk.output.table)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
