"""Rule tabulate_patching: control validation, layer progression and top mutations."""
from esmsae import reports
from esmsae.keys import keyed


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.patching_tables(keyed(smk.input, "patching", ("protein", "layer")),
                                 keyed(smk.input, "scores", ("protein",)), smk.params.top_n, smk.input.labels,
                                 dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
