"""Rule tabulate_patching: control validation, layer progression and top mutations."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.patching import tabulate_patching


def main(smk):
    with log_to(smk.log[0]):
        tabulate_patching(keyed(smk.input, "patching", ("protein", "layer")),
                          keyed(smk.input, "scores", ("protein",)), smk.params.top_n, smk.input.labels,
                          dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
