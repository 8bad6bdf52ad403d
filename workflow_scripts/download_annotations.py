"""Rule download_annotations: a protein's UniProt GFF3, fetched where the machine has internet (a login node)."""
from esmsae.inputs.annotations import download_gff
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        download_gff(smk.wildcards.accession, smk.output.gff)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
