"""Rules plot_<figure>: one figure (PNG and PDF) from its named inputs."""
from esmsae import reports


def main(smk):
    with reports.log_to(smk.log[0]):
        reports.draw_figure(smk.params.figure, dict(smk.input.items()), smk.params.options, smk.output.png,
                             smk.output.pdf)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
