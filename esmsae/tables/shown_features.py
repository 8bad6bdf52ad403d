"""Rule select_features: every feature a table or figure shows, and which of them get a card.

``features/shown.csv`` is a checkpoint: the output effects are measured, and the cards drawn,
for the features it lists. Nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from esmsae.analyses.arrays import Attributions
from esmsae.config.settings import CircuitSizeSettings
from esmsae.pipeline.columns import one_forward
from esmsae.pipeline.io import write_csv
from esmsae.tables.circuits import minimal_circuits
from esmsae.tables.ig import top_n_features, universal_features
from esmsae.tables.patching import read_patching, real_patches


def shown_features(top_features: Mapping[int, Mapping[int, int]], top_patches: Mapping[int, Mapping[int, int]],
                   universal: pd.DataFrame, circuits: Mapping[int, Mapping[int, int]], max_cards: int,
                   activations: str | None) -> pd.DataFrame:
    """Every (layer, feature) a table or figure shows, why, and which get a feature card.

    `top_features`, `top_patches` and `circuits` map layer -> {feature: how many mutants} (in a
    mutant's IG top-20; its largest single-feature patch; in its minimal circuit); `universal` is
    ``universal_features.csv``. Cards go to universal features first (more proteins, then layer,
    then feature), then to circuit features (more mutants first), at most `max_cards`. `activations` is the
    forward the features were read on.
    """
    in_universal = {(int(r.layer), int(r.feature)): len(str(r.proteins).split(";")) for r in universal.itertuples()}
    keys = sorted({(layer, f) for part in (top_features, top_patches, circuits) for layer, fs in part.items()
                   for f in fs} | set(in_universal))
    table = pd.DataFrame({
        "layer": [layer for layer, _ in keys], "feature": [f for _, f in keys],
        "ig_top20": [top_features.get(layer, {}).get(f, 0) for layer, f in keys],
        "top_patch": [top_patches.get(layer, {}).get(f, 0) for layer, f in keys],
        "universal": [(layer, f) in in_universal for layer, f in keys],
        "circuits": [circuits.get(layer, {}).get(f, 0) for layer, f in keys],
    }, columns=["layer", "feature", "ig_top20", "top_patch", "universal", "circuits"])
    priority = sorted(
        [((0, -in_universal[key], key[0], key[1]), key) for key in keys if key in in_universal]
        + [((1, -circuits[key[0]][key[1]], key[0], key[1]), key) for key in keys
           if key not in in_universal and circuits.get(key[0], {}).get(key[1], 0) > 0])
    carded = {key for _, key in priority[:max_cards]}
    table["card"] = [key in carded for key in keys]
    table["activations"] = activations
    return table.astype({"layer": "int64", "feature": "int64"})


log = logging.getLogger("esmsae")


def select_features(ig: Mapping[tuple[str, int], Path], patching: Mapping[tuple[str, int], Path],
                    curves: Mapping[tuple[str, int], Path], sizes: CircuitSizeSettings, max_cards: int,
                    out: str | Path, min_proteins: int | float = 2) -> None:
    """Rule select_features: every feature a table or figure shows, and which get a card."""
    results = {pair: Attributions.read(path) for pair, path in ig.items()}
    top: dict[int, Counter] = {}
    for (_, layer), result in results.items():
        for features in top_n_features(result.attribution):
            top.setdefault(layer, Counter()).update(features.tolist())
    patches: dict[int, Counter] = {}
    forwards = [r.activations for r in results.values()]
    for (_, layer), path in patching.items():
        table = read_patching(path)
        forwards += table["activations"].tolist()
        real = real_patches(table)
        best = real.sort_values(["mutant", "abs_effect", "feature"], ascending=[True, False, True], kind="mergesort")
        patches.setdefault(layer, Counter()).update(best.drop_duplicates("mutant")["feature"].astype(int).tolist())
    circuits: dict[int, Counter] = {}
    minimal = minimal_circuits(curves, sizes)
    for layer, features in zip(minimal["layer"], minimal["features"], strict=True):
        circuits.setdefault(int(layer), Counter()).update(int(j) for j in str(features).split(";") if j)
    universal = universal_features(results, min_proteins=min_proteins)
    table = shown_features(top, patches, universal, circuits, max_cards, one_forward(forwards, "shown features"))
    log.info("%d features shown in tables or figures over %d layers; %d get a card", len(table),
             table["layer"].nunique(), int(table["card"].sum()))
    write_csv(table, out)
