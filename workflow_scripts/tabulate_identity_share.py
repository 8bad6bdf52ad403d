"""Rule tabulate_identity_share: how much attribution the residue-identity features carry."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.identity_share import tabulate_identity_share


def main(smk):
    with log_to(smk.log[0]):
        tabulate_identity_share(smk.input.labels, keyed(smk.input, "ig", ("protein", "layer")),
                                dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
