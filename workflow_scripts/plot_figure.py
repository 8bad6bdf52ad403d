"""Rules plot_<figure>: one figure (PNG and PDF) from its named inputs."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        workflow.draw_figure(smk.params.figure, dict(smk.input.items()), smk.params.options, smk.output.png,
                             smk.output.pdf)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
