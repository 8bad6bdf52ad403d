"""Rules plot_<name>: every figure, with how its inputs are read and how it is drawn.

A figure is an entry in :data:`FIGURES` (its reader and its drawing, both in the figure's own
module) and in ``FIGURES`` of ``rules/common.smk`` (its inputs, category and caption).
Nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from esmsae.figures.ablation import read_set_ablation, set_ablation
from esmsae.figures.agreement import attribution_agreement, read_agreement
from esmsae.figures.circuits import (
    circuit_faithfulness,
    minimal_circuit_sizes,
    read_curves,
    read_sizes,
)
from esmsae.figures.graph import (
    feature_graph,
    mediated_fraction,
    read_graph,
    read_mediation,
)
from esmsae.figures.identity_share import identity_share, read_identity_share
from esmsae.figures.ig import (
    ig_concentration,
    read_attributions,
    read_attributions_labelled,
    universal_features,
)
from esmsae.figures.patching import (
    controls,
    delta_vs_effect,
    layer_effects,
    read_patches,
    read_validation,
)
from esmsae.figures.positions import position_spread, read_positions
from esmsae.figures.sae_quality import read_quality, sae_fidelity
from esmsae.figures.style import save

log = logging.getLogger("esmsae")


@dataclass(frozen=True)
class Figure:
    """A figure: `read` its named inputs through their types into keyword arguments, then
    ``draw(**those, png=..., pdf=..., **options)``."""

    read: Callable[[Mapping[str, Path]], dict]
    draw: Callable[..., Any]


FIGURES = {
    "layer_effects": Figure(read_validation, layer_effects),
    "controls": Figure(read_validation, controls),
    "delta_vs_effect": Figure(read_patches, delta_vs_effect),
    "ig_concentration": Figure(read_attributions, ig_concentration),
    "universal_features": Figure(read_attributions_labelled, universal_features),
    "circuit_faithfulness": Figure(read_curves, circuit_faithfulness),
    "minimal_circuit_sizes": Figure(read_sizes, minimal_circuit_sizes),
    "identity_share": Figure(read_identity_share, identity_share),
    "attribution_agreement": Figure(read_agreement, attribution_agreement),
    "position_spread": Figure(read_positions, position_spread),
    "feature_graph": Figure(read_graph, feature_graph),
    "mediated_fraction": Figure(read_mediation, mediated_fraction),
    "sae_fidelity": Figure(read_quality, sae_fidelity),
    "set_ablation": Figure(read_set_ablation, set_ablation),
}


def only_proteins(value: Any, proteins: Collection[str]) -> Any:
    """A figure's read input restricted to `proteins`: a table's rows by its ``protein`` column, a mapping's
    entries keyed by ``(protein, ...)``; anything else (labels keyed by layer and feature) as it is."""
    if isinstance(value, pd.DataFrame) and "protein" in value.columns:
        return value[value["protein"].astype(str).isin(set(proteins))].reset_index(drop=True)
    if isinstance(value, Mapping) and value and all(isinstance(k, tuple) and k and isinstance(k[0], str)
                                                     for k in value):
        return {k: v for k, v in value.items() if k[0] in set(proteins)}
    return value


def plot_figure(name: str, inputs: Mapping[str, Path], options: Mapping[str, Any], png: str | Path,
                pdf: str | Path) -> None:
    """Rules plot_<name>: one figure from its named inputs, as PNG and PDF. A ``proteins`` option (the study's
    ``figures.proteins``) keeps only those proteins' data; an ``activations`` option (``sae.activations``) is the
    forward the study's SAEs read. Both are said on the figure itself, in a strip below its axes."""
    figure = FIGURES[name]
    options = dict(options)
    proteins = options.pop("proteins", None)
    activations = options.pop("activations", None)
    read = figure.read(inputs)
    if proteins is not None:
        read = {k: only_proteins(v, proteins) for k, v in read.items()}
        log.info("%s: drawn for %d proteins (figures.proteins): %s", name, len(proteins), ", ".join(proteins))
    fig = figure.draw(**read, png=png, pdf=pdf, **options)
    notes = [f"the study reads its SAEs on the {activations} forward (sae.activations)"] if activations else []
    if proteins is not None:
        notes.append(f"drawn for {len(proteins)} of the study's proteins (figures.proteins): {', '.join(proteins)}; "
                     "the tables hold every protein")
    if notes and isinstance(fig, MplFigure):  # say so on the figure itself, below its axes
        strip = 0.2 / fig.get_figheight()  # a 0.2-inch strip kept free by the layout
        engine = fig.get_layout_engine()
        if isinstance(engine, ConstrainedLayoutEngine):
            engine.set(rect=(0, strip, 1, 1 - strip))
        fig.text(0.003, 0.003, "; ".join(notes), fontsize="x-small", color="0.4", ha="left", va="bottom")
        save(fig, png, pdf)
