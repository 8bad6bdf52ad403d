"""Rules assemble_graphs and tabulate_mediation: cross-layer feature graphs as files and tables.

JSON and GraphML per mutant, the per-protein aggregate, and the mediated shares by layer pair
(no torch here). :mod:`esmsae.analyses.graph` measures them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from esmsae.pipeline.columns import PAIR_SETTINGS, TABLES, one_forward, read_table
from esmsae.pipeline.io import atomic_path, write_csv
from esmsae.tables.labels import label_lookup
from esmsae.tables.statistics import mean_sem, spearman, wilcoxon_p


def mutant_graph(protein: str, mutant: str, nodes: pd.DataFrame, edges: pd.DataFrame, labels: Mapping,
                 top_edges: int) -> dict:
    """The graph of one mutant over every layer pair: the `top_edges` measured edges with the largest
    ``|M|``, and their nodes (layer, feature, label, one-layer patch effect)."""
    measured = edges[edges["chosen"] == "atp"].copy()
    measured = measured.reindex(measured["mediated"].abs().sort_values(ascending=False, kind="mergesort").index)
    kept = measured.head(top_edges)
    keys = sorted({(int(r.layer_up), int(r.up)) for r in kept.itertuples()}
                  | {(int(r.layer_down), int(r.down)) for r in kept.itertuples()})
    effect = {(int(r.layer), int(r.feature)): float(r.effect) for r in nodes.itertuples()}
    return {
        "protein": protein, "mutant": mutant,
        "activations": one_forward(nodes["activations"] if len(nodes) else (), f"graph of {protein} {mutant}"),
        "nodes": [{"id": f"L{layer}_F{feature}", "layer": layer, "feature": feature,
                   "label": labels.get((layer, feature), ""), "effect": effect.get((layer, feature))}
                  for layer, feature in keys],
        "edges": [{"source": f"L{int(r.layer_up)}_F{int(r.up)}", "target": f"L{int(r.layer_down)}_F{int(r.down)}",
                   "w": float(r.w), "M": float(r.mediated), "linear": float(r.linear)} for r in kept.itertuples()],
    }


def graphml(graph: dict) -> str:
    """GraphML (Cytoscape, Gephi) of a graph as :func:`mutant_graph` builds it; the graph's own data
    say which protein, mutant and forward (``activations``) it is of."""
    keys = [("protein", "graph", "string"), ("mutant", "graph", "string"), ("activations", "graph", "string"),
            ("layer", "node", "int"), ("feature", "node", "int"), ("label", "node", "string"),
            ("effect", "node", "double"), ("w", "edge", "double"), ("M", "edge", "double"),
            ("linear", "edge", "double"), ("n_mutants", "edge", "int")]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">']
    lines += [f'  <key id="{name}" for="{kind}" attr.name="{name}" attr.type="{kind_type}"/>'
              for name, kind, kind_type in keys]
    lines.append(f'  <graph id="{escape(graph.get("mutant", "aggregate"))}" edgedefault="directed">')
    lines += [f'    <data key="{k}">{escape(str(graph[k]))}</data>' for k in ("protein", "mutant", "activations")
              if graph.get(k) is not None]
    for node in graph["nodes"]:
        lines.append(f'    <node id="{node["id"]}">')
        lines += [f'      <data key="{k}">{escape(str(node[k]))}</data>'
                  for k in ("layer", "feature", "label", "effect") if node.get(k) is not None]
        lines.append("    </node>")
    for i, edge in enumerate(graph["edges"]):
        lines.append(f'    <edge id="e{i}" source="{edge["source"]}" target="{edge["target"]}">')
        lines += [f'      <data key="{k}">{float(edge[k])!r}</data>' for k in ("w", "M", "linear") if k in edge]
        lines += [f'      <data key="n_mutants">{int(edge["n_mutants"])}</data>'] if "n_mutants" in edge else []
        lines.append("    </edge>")
    lines += ["  </graph>", "</graphml>"]
    return "\n".join(lines) + "\n"


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(data: dict, path: str | Path) -> None:
    write_text(json.dumps(data, indent=1, allow_nan=True) + "\n", path)


def aggregate_edges(edges: pd.DataFrame, labels: Mapping) -> pd.DataFrame:
    """Edges recurring across a protein's mutants (measured ones): how many mutants, mean w and M."""
    measured = edges[edges["chosen"] == "atp"]
    rows = []
    for (layer_up, up, layer_down, down), part in measured.groupby(["layer_up", "up", "layer_down", "down"]):
        rows.append({"layer_up": int(layer_up), "up": int(up), "up_label": labels.get((int(layer_up), int(up)), ""),
                     "layer_down": int(layer_down), "down": int(down),
                     "down_label": labels.get((int(layer_down), int(down)), ""), "n_mutants": part["mutant"].nunique(),
                     "mean_w": float(part["w"].mean()), "mean_mediated": float(part["mediated"].mean()),
                     "mean_abs_mediated": float(part["mediated"].abs().mean()),
                     "activations": part["activations"].iloc[0]})
    table = pd.DataFrame(rows, columns=TABLES["graph_aggregate"])
    return table.sort_values(["n_mutants", "mean_abs_mediated"], ascending=False, kind="mergesort",
                             ignore_index=True)


def strongest_paths(aggregate: pd.DataFrame, layers: list[int], n: int) -> list[tuple[float, list[tuple[int, int]]]]:
    """The `n` strongest paths from the first graph layer to the last through the aggregate's edges.

    An edge's strength is its Σ|M| over the protein's mutants (``n_mutants × mean_abs_mediated``: both
    recurring and large count); a path's is its weakest edge's. Returns ``(strength, [(layer, feature),
    …])``, strongest first, ties broken by the nodes so row order never matters. Exact: a path only
    weakens as it grows, so the top `n` paths into a node extend the top `n` into its upstream nodes.
    """
    layers = sorted(layers)
    if len(layers) < 2 or not len(aggregate) or n < 1:
        return []
    strength: dict[tuple[int, int], dict[tuple[int, int], float]] = {}
    for r in aggregate.itertuples():
        strength.setdefault((int(r.layer_up), int(r.up)), {})[(int(r.layer_down), int(r.down))] = \
            float(r.n_mutants) * float(r.mean_abs_mediated)

    def top(paths):
        return sorted(paths, key=lambda t: (-t[0], t[1]))[:n]

    best = {node: [(np.inf, [node])] for node in strength if node[0] == layers[0]}
    for upper in layers[1:]:
        into: dict[tuple[int, int], list] = {}
        for node, paths in best.items():
            for target, edge in strength.get(node, {}).items():
                if target[0] == upper:
                    into.setdefault(target, []).extend((min(score, edge), path + [target]) for score, path in paths)
        best = {node: top(paths) for node, paths in into.items()}
    return top([path for paths in best.values() for path in paths])


def edge_ranking_agreement(edges: pd.DataFrame) -> pd.DataFrame:
    """Per mutant and layer pair: does AtP's ranking of candidate edges agree with the exact one?

    ``spearman``: ρ between AtP's linear estimate and the exact ``M`` over the measured (AtP-chosen)
    edges; ``n_missed``: random check edges whose exact ``|M|`` is at least the smallest kept ``|M|``
    (edges the exact ranking would have kept but AtP's cut left out), of ``n_checked``.
    """
    rows = []
    for (mutant, layer_up, layer_down), part in edges.groupby(["mutant", "layer_up", "layer_down"], sort=False):
        kept, check = part[part["chosen"] == "atp"], part[part["chosen"] == "check"]
        floor = kept["mediated"].abs().min() if len(kept) else np.inf
        rows.append({"mutant": mutant, "layer_up": int(layer_up), "layer_down": int(layer_down),
                     "n_measured": len(kept), "spearman": spearman(kept["linear"].to_numpy(),
                                                                   kept["mediated"].to_numpy())[0],
                     "n_checked": len(check), "n_missed": int((check["mediated"].abs() >= floor).sum())})
    return pd.DataFrame(rows, columns=["mutant", "layer_up", "layer_down", "n_measured", "spearman", "n_checked",
                                       "n_missed"])


def mediated_fractions(shares: pd.DataFrame) -> pd.DataFrame:
    """Per mutant and layer pair: the share of its upstream features' effects their top downstream
    features carry, ``Σ_a |effect_a − effect_a|B| / Σ_a |effect_a|``, and the same with the random hold
    (the null). NaN where no upstream feature with measured edges moves the score."""
    rows = []
    for (layer_up, layer_down, mutant), part in shares.groupby(["layer_up", "layer_down", "mutant"], sort=False):
        total = part["effect"].abs().sum()
        rows.append({"layer_up": int(layer_up), "layer_down": int(layer_down), "mutant": mutant,
                     "mediated_fraction": (part["effect"] - part["held_effect"]).abs().sum() / total
                     if total > 0 else np.nan,
                     "null_fraction": (part["effect"] - part["null_held_effect"]).abs().sum() / total
                     if total > 0 else np.nan})
    return pd.DataFrame(rows, columns=["layer_up", "layer_down", "mutant", "mediated_fraction", "null_fraction"])


def mediation_table(shares: Mapping[str, pd.DataFrame], edges: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per protein and layer pair, the mutant as the unit: the mediated fraction beside its null (mean ±
    s.e.m. over mutants, the share of mutants above the null, paired Wilcoxon p), the median per-feature
    mediated share, and how well AtP ranked the edges."""
    rows = []
    for protein, table in shares.items():
        agreement = edge_ranking_agreement(edges[protein])
        for (layer_up, layer_down), part in table.groupby(["layer_up", "layer_down"], sort=True):
            fractions = mediated_fractions(part).dropna()
            real, null = (fractions[c].to_numpy(dtype=np.float64) for c in ("mediated_fraction", "null_fraction"))
            ranking = agreement[(agreement["layer_up"] == layer_up) & (agreement["layer_down"] == layer_down)]
            rows.append({"protein": protein, "layer_up": int(layer_up), "layer_down": int(layer_down),
                         "n_mutants": len(fractions),
                         **dict(zip(["mediated_fraction_mean", "mediated_fraction_sem"], mean_sem(real), strict=True)),
                         **dict(zip(["null_fraction_mean", "null_fraction_sem"], mean_sem(null), strict=True)),
                         "frac_mutants_above_null": float(np.mean(real > null)) if len(real) else np.nan,
                         "wilcoxon_p": wilcoxon_p(real - null),
                         "median_feature_share": float(part["mediated_share"].median()),
                         "median_null_share": float(part["null_share"].median()),
                         "atp_spearman_mean": mean_sem(ranking["spearman"].to_numpy(dtype=np.float64))[0],
                         "atp_missed": int(ranking["n_missed"].sum()), "atp_checked": int(ranking["n_checked"].sum()),
                         **{c: part[c].iloc[0] for c in PAIR_SETTINGS}})
    return pd.DataFrame(rows, columns=TABLES["mediated_shares"])


log = logging.getLogger("esmsae")


# -- cross-layer feature graphs ------------------------------------------------------------------
def assemble_graphs(protein: str, nodes: Mapping[int, Path], edges: Mapping[int, Path], labels_table: str | Path,
                    top_edges: int, out_dir: str | Path, aggregate_csv: str | Path,
                    aggregate_graphml: str | Path) -> None:
    """Rule assemble_graphs: each mutant's graph over every layer pair (JSON and GraphML), and the
    protein's aggregate: edges recurring across mutants, with counts."""
    names = label_lookup(read_table(labels_table, "feature_labels"))
    all_nodes = pd.concat([read_table(path, "graph_nodes") for path in nodes.values()], ignore_index=True)
    all_edges = pd.concat([read_table(path, "graph_edges") for path in edges.values()], ignore_index=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mutants = list(dict.fromkeys(all_nodes["mutant"].tolist()))
    for mutant in mutants:
        one = mutant_graph(protein, mutant, all_nodes[all_nodes["mutant"] == mutant],
                           all_edges[all_edges["mutant"] == mutant], names, top_edges)
        write_json(one, out_dir / f"{protein}_{mutant}.json")
        write_text(graphml(one), out_dir / f"{protein}_{mutant}.graphml")
    table = aggregate_edges(all_edges, names)
    write_csv(table, aggregate_csv)
    top = table.head(top_edges)
    keys = sorted({(r.layer_up, r.up) for r in top.itertuples()} | {(r.layer_down, r.down) for r in top.itertuples()})
    aggregate = {"protein": protein, "mutant": "aggregate",
                 "activations": one_forward(all_nodes["activations"], f"graphs of {protein}"),
                 "nodes": [{"id": f"L{la}_F{f}", "layer": la, "feature": f, "label": names.get((la, f), "")}
                           for la, f in keys],
                 "edges": [{"source": f"L{r.layer_up}_F{r.up}", "target": f"L{r.layer_down}_F{r.down}",
                            "w": r.mean_w, "M": r.mean_mediated, "n_mutants": r.n_mutants} for r in top.itertuples()]}
    write_text(graphml(aggregate), aggregate_graphml)
    log.info("%s: graphs of %d mutants; %d distinct measured edges, the most recurrent in %d mutants", protein,
             len(mutants), len(table), int(table["n_mutants"].max()) if len(table) else 0)


def tabulate_mediation(shares: Mapping[tuple[str, int], Path], edges: Mapping[tuple[str, int], Path],
                       out: str | Path) -> None:
    """Rule tabulate_mediation: mediated shares by protein and layer pair, and AtP's edge ranking."""
    proteins = list(dict.fromkeys(p for p, _ in shares))

    def by_protein(files: Mapping[tuple[str, int], Path], kind: str) -> dict[str, pd.DataFrame]:
        return {p: pd.concat([read_table(path, kind) for (q, _), path in files.items() if q == p]) for p in proteins}

    write_csv(mediation_table(by_protein(shares, "graph_shares"), by_protein(edges, "graph_edges")), out)
