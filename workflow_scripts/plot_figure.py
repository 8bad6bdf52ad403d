"""Rules plot_<figure>: one figure (PNG and PDF) from its named inputs."""
from esmsae.figures.registry import plot_figure
from esmsae.pipeline.logs import log_to


def main(smk):
    with log_to(smk.log[0]):
        plot_figure(smk.params.figure, dict(smk.input.items()), smk.params.options, smk.output.png,
                    smk.output.pdf)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
