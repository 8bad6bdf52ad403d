"""Entry points of the light rules — tables, figures, feature labels and cards — that import no torch.

Like :mod:`esmsae.workflow` (the rules that run the model), each function takes plain paths and
typed settings, writes its outputs atomically and logs what it read; keeping torch out of these
imports makes each of the many small table and figure jobs start in about a second.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from esmsae import (
    aggregate,
    agreement,
    attribution_figures,
    attribution_tables,
    comparison_figures,
    feature_figures,
    figures,
    graph_tables,
    labels,
)
from esmsae.arrays import Attributions
from esmsae.columns import TABLES, read_table
from esmsae.errors import InputError
from esmsae.io import write_csv
from esmsae.keys import keyed
from esmsae.labels import Activity, shown_features
from esmsae.logs import log_to  # noqa: F401 (the rule scripts' log set-up, re-exported)
from esmsae.settings import CircuitSizeSettings
from esmsae.statistics import mean_sem

log = logging.getLogger("esmsae")


def correlate(scores: Mapping[str, Path], out: str | Path) -> None:
    """Rule correlate_dms: Spearman ρ of WT-marginal scores with DMS scores, per protein."""
    table = aggregate.dms_correlation({protein: read_table(path, "scores") for protein, path in scores.items()})
    write_csv(table, out)


def patching_tables(patching: Mapping[tuple[str, int], Path], scores: Mapping[str, Path], top_n: int,
                    labels_table: str | Path, out: Mapping[str, Path]) -> None:
    """Rule tabulate_patching: control validation, layer progression and top mutations (labelled)."""
    tables = {pair: aggregate.read_patching(path) for pair, path in patching.items()}
    score_tables = {protein: read_table(path, "scores") for protein, path in scores.items()}
    selected = {protein: int(t["selected"].sum()) for protein, t in score_tables.items()}
    write_csv(aggregate.control_validation(tables), out["validation"])
    write_csv(aggregate.layer_progression(tables, selected), out["progression"])
    names = labels.label_lookup(read_table(labels_table, "feature_labels"))
    write_csv(aggregate.top_mutations(tables, score_tables, top_n, names), out["top"])


def ig_tables(ig: Mapping[tuple[str, int], Path], labels_table: str | Path, out: Mapping[str, Path],
              consistency: Mapping[int, Path]) -> None:
    """Rule tabulate_attributions: concentration, feature consistency per layer and universal features."""
    results = {pair: Attributions.read(path) for pair, path in ig.items()}
    names = labels.label_lookup(read_table(labels_table, "feature_labels"))
    write_csv(attribution_tables.ig_concentration(results), out["concentration"])
    write_csv(attribution_tables.concentration_by_mutant(results), out["concentration_mutants"])
    write_csv(attribution_tables.universal_features(results, labels=names), out["universal"])
    for layer, path in consistency.items():
        at_layer = {p: r for (p, lay), r in results.items() if lay == layer}
        write_csv(attribution_tables.feature_consistency(at_layer, labels=names), path)


def minimal_circuits(curves: Mapping[tuple[str, int], Path], settings: CircuitSizeSettings) -> pd.DataFrame:
    """Every mutant's minimal circuit at every (protein, layer), read off the curves find_circuits measured."""
    return attribution_tables.circuit_sizes(
        attribution_tables.circuit_sizes_from_curves(read_table(path, "circuit_curves"), protein, settings)
        for (protein, _), path in curves.items())


def circuit_sizes(curves: Mapping[tuple[str, int], Path], settings: CircuitSizeSettings, labels_table: str | Path,
                  out: str | Path) -> None:
    """Rule tabulate_circuit_sizes: minimal circuit of every mutant, all proteins and layers, its features labelled."""
    table = minimal_circuits(curves, settings)
    names = labels.label_lookup(read_table(labels_table, "feature_labels"))
    table.insert(table.columns.get_loc("features") + 1, "labels",
                 [" | ".join(names.get((int(layer), int(j)), "") for j in str(features).split(";") if j)
                  for layer, features in zip(table["layer"], table["features"], strict=True)])
    write_csv(table[TABLES["circuit_sizes_labelled"]], out)


# -- figures: one mechanism; each figure says how its inputs are read and how it is drawn --------
def _validation(inputs: Mapping[str, Path]) -> dict:
    return {"validation": read_table(inputs["validation"], "control_validation")}


def _patching(inputs: Mapping[str, Path]) -> dict:
    return {"tables": {pair: aggregate.read_patching(path) for pair, path in keyed(inputs, "patching", PAIR).items()}}


def _attributions(inputs: Mapping[str, Path]) -> dict:
    return {"results": {pair: Attributions.read(path) for pair, path in keyed(inputs, "ig", PAIR).items()}}


def _attributions_labelled(inputs: Mapping[str, Path]) -> dict:
    return _attributions(inputs) | {"labels": labels.label_lookup(read_table(inputs["labels"], "feature_labels"))}


def _curves(inputs: Mapping[str, Path]) -> dict:
    curves = keyed(inputs, "curves", PAIR)
    return {"curves": {pair: read_table(path, "circuit_curves") for pair, path in curves.items()}}


def _sizes(inputs: Mapping[str, Path]) -> dict:
    return {"sizes": read_table(inputs["sizes"], "circuit_sizes_labelled")}


def _identity_share(inputs: Mapping[str, Path]) -> dict:
    return {"table": read_table(inputs["mutants"], "identity_share_mutants")}


def _graph(inputs: Mapping[str, Path]) -> dict:
    return {"aggregate": read_table(inputs["aggregate"], "graph_aggregate")}


def _mediation(inputs: Mapping[str, Path]) -> dict:
    parts = [graph_tables.mediated_fractions(read_table(path, "graph_shares")).assign(protein=protein)
             for (protein, _), path in keyed(inputs, "shares", PAIR).items()]
    columns = ["protein", "layer_up", "layer_down", "mutant", "mediated_fraction", "null_fraction"]
    return {"fractions": pd.concat(parts, ignore_index=True).reindex(columns=columns) if parts
            else pd.DataFrame(columns=columns)}


def _agreement(inputs: Mapping[str, Path]) -> dict:
    return {"table": read_table(inputs["mutants"], "agreement_mutants")}


def _positions(inputs: Mapping[str, Path]) -> dict:
    return {"positions": {key: read_table(path, "positions") for key, path in keyed(inputs, "positions", PAIR).items()},
            "summaries": {key: read_table(path, "positions_summary")
                          for key, path in keyed(inputs, "summary", PAIR).items()}}


@dataclass(frozen=True)
class Figure:
    """A figure: `read` its named inputs through their types into keyword arguments, then
    ``draw(**those, png=..., pdf=..., **options)``."""

    read: Callable[[Mapping[str, Path]], dict]
    draw: Callable[..., Any]


PAIR = ("protein", "layer")
FIGURES = {
    "layer_effects": Figure(_validation, figures.layer_effects),
    "controls": Figure(_validation, figures.controls),
    "delta_vs_effect": Figure(_patching, figures.delta_vs_effect),
    "ig_concentration": Figure(_attributions, attribution_figures.ig_concentration),
    "universal_features": Figure(_attributions_labelled, attribution_figures.universal_features),
    "circuit_faithfulness": Figure(_curves, attribution_figures.circuit_faithfulness),
    "minimal_circuit_sizes": Figure(_sizes, attribution_figures.minimal_circuit_sizes),
    "identity_share": Figure(_identity_share, feature_figures.identity_share),
    "attribution_agreement": Figure(_agreement, comparison_figures.attribution_agreement),
    "position_spread": Figure(_positions, comparison_figures.position_spread),
    "feature_graph": Figure(_graph, comparison_figures.feature_graph),
    "mediated_fraction": Figure(_mediation, comparison_figures.mediated_fraction),
}


def draw_figure(name: str, inputs: Mapping[str, Path], options: Mapping[str, Any], png: str | Path,
                pdf: str | Path) -> None:
    """Rules plot_<name>: one figure from its named inputs, as PNG and PDF."""
    figure = FIGURES[name]
    figure.draw(**figure.read(inputs), png=png, pdf=pdf, **options)


def select_features(ig: Mapping[tuple[str, int], Path], patching: Mapping[tuple[str, int], Path],
                    curves: Mapping[tuple[str, int], Path], sizes: CircuitSizeSettings, max_cards: int,
                    out: str | Path) -> None:
    """Rule select_features: every feature a table or figure shows, and which get a card."""
    results = {pair: Attributions.read(path) for pair, path in ig.items()}
    top: dict[int, Counter] = {}
    for (_, layer), result in results.items():
        for features in attribution_tables.top_n_features(result.attribution):
            top.setdefault(layer, Counter()).update(features.tolist())
    patches: dict[int, Counter] = {}
    for (_, layer), path in patching.items():
        real = aggregate.real_patches(aggregate.read_patching(path))
        best = real.sort_values(["mutant", "abs_effect", "feature"], ascending=[True, False, True], kind="mergesort")
        patches.setdefault(layer, Counter()).update(best.drop_duplicates("mutant")["feature"].astype(int).tolist())
    circuits: dict[int, Counter] = {}
    minimal = minimal_circuits(curves, sizes)
    for layer, features in zip(minimal["layer"], minimal["features"], strict=True):
        circuits.setdefault(int(layer), Counter()).update(int(j) for j in str(features).split(";") if j)
    universal = attribution_tables.universal_features(results)
    table = shown_features(top, patches, universal, circuits, max_cards)
    log.info("%d features shown in tables or figures over %d layers; %d get a card", len(table),
             table["layer"].nunique(), int(table["card"].sum()))
    write_csv(table, out)


def label_features(activity: Mapping[int, Path], effects: Mapping[int, Path], identity_f1: float,
                   out: str | Path) -> None:
    """Rule label_features: every feature's statistics, output effect (where measured) and label."""
    parts = []
    for layer, path in sorted(activity.items()):
        table = labels.feature_table(Activity.read(path), identity_f1, read_table(effects[layer], "output_effects"))
        log.info("layer %d: %d identity features, %d inactive on the reference", layer, int(table["identity"].sum()),
                 int((table["n_active"] == 0).sum()))
        parts.append(table)
    write_csv(pd.concat(parts, ignore_index=True)[TABLES["feature_labels"]], out)


def identity_share_tables(labels_table: str | Path, ig: Mapping[tuple[str, int], Path],
                          out: Mapping[str, Path]) -> None:
    """Rule tabulate_identity_share: per mutant and per protein × layer."""
    table = read_table(labels_table, "feature_labels")
    rows = []
    for (protein, layer), path in ig.items():
        result = Attributions.read(path)
        masks = labels.identity_masks(table[table["layer"] == layer], result.attribution.shape[1])
        for m, name in enumerate(result.mutant.tolist()):
            wt, mut = labels.residues_of(name, "wt"), labels.residues_of(name, "mut")
            share = labels.identity_share(result.attribution[m], result.error_attribution[m], result.abs_delta[m],
                                          np.any([masks[a] for a in wt], axis=0),
                                          np.any([masks[b] for b in mut], axis=0))
            rows.append({"protein": protein, "layer": layer, "mutant": name, "wt": ":".join(sorted(wt)),
                         "mut": ":".join(sorted(mut)), **share, "k": result.k, "d_sae": result.d_sae,
                         "space": result.space})
    mutants = pd.DataFrame(rows, columns=TABLES["identity_share_mutants"])
    summary = []
    for (protein, layer), part in mutants.groupby(["protein", "layer"], sort=False):
        row = {"protein": protein, "layer": layer, "n_mutants": len(part),
               "n_identity_features": int(table[(table["layer"] == layer)]["identity"].astype(bool).sum())}
        for side in ("wt", "mut"):
            for null in ("", "_null"):
                column = f"{side}_identity_share{null}"
                row[f"{column}_mean"], row[f"{column}_sem"] = mean_sem(part[column].to_numpy(dtype=np.float64))
        summary.append(row | {c: part[c].iloc[0] for c in ("k", "d_sae", "space")})
    write_csv(mutants, out["mutants"])
    write_csv(pd.DataFrame(summary, columns=TABLES["identity_share"]), out["table"])


def top_features_table(npz: str | Path, labels_table: str | Path, out: str | Path) -> None:
    """Rule tabulate_top_features: a protein's 20 largest |A_j| per mutant at one layer, labelled."""
    result = Attributions.read(npz)
    names = labels.labels_by_feature(read_table(labels_table, "feature_labels"), result.layer)
    rows = []
    for m, mutant in enumerate(result.mutant.tolist()):
        for rank, j in enumerate(attribution_tables.top_n_features(result.attribution[m:m + 1])[0], start=1):
            rows.append({"mutant": mutant, "rank": rank, "feature": int(j), "label": names.get(int(j), ""),
                         "attribution": float(result.attribution[m, j]), "abs_delta": float(result.abs_delta[m, j]),
                         "layer": result.layer, "k": result.k, "d_sae": result.d_sae, "space": result.space})
    write_csv(pd.DataFrame(rows, columns=TABLES["ig_top"]), out)


def draw_feature_card(layer: int, feature: int, labels_table: str | Path, activity: str | Path,
                      effects: str | Path, ig: Mapping[str, Path], png: str | Path, pdf: str | Path) -> None:
    """Rule draw_feature_card: one feature's card (see esmsae.feature_figures.feature_card)."""
    table = read_table(labels_table, "feature_labels")
    row = table[(table["layer"] == layer) & (table["feature"] == feature)]
    if row.empty:
        raise InputError(f"{labels_table}: no feature {feature} at layer {layer}")
    measured = read_table(effects, "output_effects")
    effect = measured[measured["feature"] == feature]
    mutants = []
    for protein, path in ig.items():
        result = Attributions.read(path)
        for m, name in enumerate(result.mutant.tolist()):
            a = result.attribution[m]
            if a[feature] == 0:
                continue
            denominator = np.abs(a[result.abs_delta[m] > 0]).sum() + abs(result.error_attribution[m])
            rank = int(np.sum(np.abs(a) > abs(a[feature]))) + 1
            mutants.append({"protein": protein, "mutant": name, "attribution": float(a[feature]), "rank": rank,
                            "share": abs(float(a[feature])) / denominator if denominator > 0 else np.nan})
    mutants = pd.DataFrame(mutants, columns=["protein", "mutant", "attribution", "rank", "share"])
    mutants = mutants.sort_values("attribution", key=np.abs, ascending=False, kind="mergesort")
    feature_figures.feature_card(row.iloc[0], Activity.read(activity), effect.iloc[0] if len(effect) else None,
                                 mutants, png, pdf)


# -- attribution agreement and spread over positions ---------------------------------------------
def agreement_tables(patching: Mapping[tuple[str, int], Path], ig: Mapping[tuple[str, int], Path],
                     atp: Mapping[tuple[str, int], Path], out: Mapping[str, Path]) -> None:
    """Rule tabulate_agreement: exact patching against AtP and IG, per mutant and per protein × layer."""
    by_mutant = agreement.agreement_by_mutant({key: aggregate.read_patching(patching[key]) for key in atp},
                                              {key: Attributions.read(ig[key]) for key in atp},
                                              {key: Attributions.read(path) for key, path in atp.items()})
    summary = agreement.agreement_summary(by_mutant)
    log.info("agreement with exact patching over %d mutants:\n%s", len(by_mutant),
             summary[["protein", "layer", "spearman_atp_mean", "spearman_ig_mean", "top10_atp_mean",
                      "top10_ig_mean"]].to_string(index=False))
    write_csv(by_mutant, out["mutants"])
    write_csv(summary, out["table"])


def site_share_tables(summaries: Mapping[tuple[str, int], Path], out: str | Path) -> None:
    """Rule tabulate_site_share: the site share per protein × layer."""
    write_csv(agreement.site_share_table({key: read_table(path, "positions_summary")
                                          for key, path in summaries.items()}), out)


# -- cross-layer feature graphs ------------------------------------------------------------------
def assemble_graphs(protein: str, nodes: Mapping[int, Path], edges: Mapping[int, Path], labels_table: str | Path,
                    top_edges: int, out_dir: str | Path, aggregate_csv: str | Path,
                    aggregate_graphml: str | Path) -> None:
    """Rule assemble_graphs: each mutant's graph over every layer pair (JSON and GraphML), and the
    protein's aggregate: edges recurring across mutants, with counts."""
    names = labels.label_lookup(read_table(labels_table, "feature_labels"))
    all_nodes = pd.concat([read_table(path, "graph_nodes") for path in nodes.values()], ignore_index=True)
    all_edges = pd.concat([read_table(path, "graph_edges") for path in edges.values()], ignore_index=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mutants = list(dict.fromkeys(all_nodes["mutant"].tolist()))
    for mutant in mutants:
        one = graph_tables.mutant_graph(protein, mutant, all_nodes[all_nodes["mutant"] == mutant],
                                 all_edges[all_edges["mutant"] == mutant], names, top_edges)
        graph_tables.write_json(one, out_dir / f"{protein}_{mutant}.json")
        graph_tables.write_text(graph_tables.graphml(one), out_dir / f"{protein}_{mutant}.graphml")
    table = graph_tables.aggregate_edges(all_edges, names)
    write_csv(table, aggregate_csv)
    top = table.head(top_edges)
    keys = sorted({(r.layer_up, r.up) for r in top.itertuples()} | {(r.layer_down, r.down) for r in top.itertuples()})
    aggregate = {"protein": protein, "mutant": "aggregate",
                 "nodes": [{"id": f"L{la}_F{f}", "layer": la, "feature": f, "label": names.get((la, f), "")}
                           for la, f in keys],
                 "edges": [{"source": f"L{r.layer_up}_F{r.up}", "target": f"L{r.layer_down}_F{r.down}",
                            "w": r.mean_w, "M": r.mean_mediated, "n_mutants": r.n_mutants} for r in top.itertuples()]}
    graph_tables.write_text(graph_tables.graphml(aggregate), aggregate_graphml)
    log.info("%s: graphs of %d mutants; %d distinct measured edges, the most recurrent in %d mutants", protein,
             len(mutants), len(table), int(table["n_mutants"].max()) if len(table) else 0)


def mediation_tables(shares: Mapping[tuple[str, int], Path], edges: Mapping[tuple[str, int], Path],
                     out: str | Path) -> None:
    """Rule tabulate_mediation: mediated shares by protein and layer pair, and AtP's edge ranking."""
    proteins = list(dict.fromkeys(p for p, _ in shares))

    def by_protein(files: Mapping[tuple[str, int], Path], kind: str) -> dict[str, pd.DataFrame]:
        return {p: pd.concat([read_table(path, kind) for (q, _), path in files.items() if q == p]) for p in proteins}

    write_csv(graph_tables.mediation_table(by_protein(shares, "graph_shares"), by_protein(edges, "graph_edges")), out)
