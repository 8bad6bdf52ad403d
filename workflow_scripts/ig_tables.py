"""Rule ig_tables: attribution concentration, feature consistency per layer, universal features."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        out = {"concentration": smk.output.concentration, "universal": smk.output.universal,
               "consistency": dict(zip(smk.params.layers, smk.output.consistency, strict=True))}
        workflow.ig_tables(smk.params.pairs, list(smk.input.npz), out)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
