"""Rule tabulate_patching: control validation, layer progression and top mutations."""
from esmsae import workflow
from esmsae.keys import keyed


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.patching_tables(keyed(smk.input, "patching", ("protein", "layer")),
                                 keyed(smk.input, "scores", ("protein",)), smk.params.top_n,
                                 dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
