"""Rule build_explorer: the static site from a protein to a mutant's graph to a feature."""
from pathlib import Path

from esmsae.pipeline.keys import PAIR, keyed
from esmsae.pipeline.logs import log_to
from esmsae.report.explorer import build_explorer, explorer_data


def main(smk):
    with log_to(smk.log[0]):
        cards = {}
        for name, path in keyed(smk.input, "card", ("name",)).items():
            layer, feature = name.split("_")  # L{layer}_F{feature}
            cards[(int(layer[1:]), int(feature[1:]))] = path
        data = explorer_data(keyed(smk.input, "scores", ("protein",)), smk.input.sizes,
                             keyed(smk.input, "summary", PAIR), keyed(smk.input, "graphs", ("protein",)),
                             smk.input.labels, smk.input.concepts, keyed(smk.input, "examples", ("layer",)),
                             keyed(smk.input, "top", PAIR), smk.input.findings, cards, smk.params.layers,
                             "Which SAE features carry ESM-2's mutation-effect predictions")
        build_explorer(data, cards, Path(smk.output.index).parent)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
