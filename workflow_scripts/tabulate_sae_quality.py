"""Rule tabulate_sae_quality: every layer's SAE fidelity in one table, and the task fidelity per protein."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.tables.sae_quality import tabulate_sae_quality


def main(smk):
    with log_to(smk.log[0]):
        tabulate_sae_quality(keyed(smk.input, "quality", ("layer",)), keyed(smk.input, "scores", ("layer",)),
                             dict(smk.output.items()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
