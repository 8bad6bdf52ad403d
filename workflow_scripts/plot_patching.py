"""Rules plot_layer_effects, plot_controls, plot_delta_vs_effect: one patching figure each."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        inputs = {"validation": smk.input.get("validation"), "tables": list(smk.input.get("tables", [])),
                  "pairs": smk.params.get("pairs", [])}
        workflow.plot_patching(smk.params.figure, inputs, smk.output.png, smk.output.pdf)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
