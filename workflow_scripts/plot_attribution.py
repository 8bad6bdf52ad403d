"""Rules plot_ig_concentration, plot_universal_features, plot_circuit_faithfulness, plot_minimal_circuit_sizes."""
from esmsae import workflow


def main(smk):
    with workflow.log_to(smk.log[0]):
        inputs = {"pairs": smk.params.pairs, "npz": list(smk.input.get("npz", [])),
                  "curves": list(smk.input.get("curves", [])), "sizes": smk.input.get("sizes")}
        workflow.plot_attribution(smk.params.figure, inputs, smk.output.png, smk.output.pdf,
                                  recover=smk.params.get("recover", 0.9), max_k=smk.params.get("max_k", 64))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
