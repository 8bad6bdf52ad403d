"""Rule build_explorer: a static site to browse the study, from a protein to a mutant's graph to a feature.

``{outdir}/explorer/index.html`` opens from ``file://`` with no server and no network: one page and its
own small script (``static/app.js``, no library), the study's data as scripts (a page opened from a file
may not fetch JSON), and the feature cards copied beside it. ``data.js`` is the index (title, forward,
layers, findings, each protein's counts and file); each protein's mutants and graphs are ``data/p{i}.js``
and the features, ``FEATURE_BLOCK`` per file by layer and number, ``data/f{i}.js``: a page loads only
the files it shows, so a study of hundreds of assays opens as fast as one of three. Pages (the part of
the address after ``#``):

* ``#/`` — the proteins, with their mutants and the findings;
* ``#/protein/NAME`` — its selected mutants in a sortable table: score, DMS, and per layer the full
  effect, the minimal circuit's size and the site share;
* ``#/mutant/NAME/MUTANT`` — its cross-layer graph drawn as SVG: layers as columns, nodes named by
  label, edge width by |M|, w and M on hover, a slider hiding edges below an |M| threshold, a click on
  a node opening its feature;
* ``#/feature/L{layer}_F{feature}`` — its card, label and concepts, top-activating examples, the mutants
  it carries effect for, and its graph neighbours.

The graph files it reads are documented in the README ("Graph JSON"). Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.pipeline.columns import one_forward, read_table
from esmsae.pipeline.io import atomic_path

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
CONCEPTS_PER_FEATURE = 8
MUTANTS_PER_FEATURE = 40
FEATURE_BLOCK = 256  # features per data file (by layer, then feature // FEATURE_BLOCK)


def clean(value):
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def mutant_rows(scores: pd.DataFrame, sizes: pd.DataFrame, shares: Mapping[int, pd.DataFrame],
                graphs: set[str]) -> list[dict]:
    """One protein's selected mutants, with their per-layer full effect, circuit size and site share."""
    chosen = scores[scores["selected"].astype(bool)]
    rows = []
    for r in chosen.itertuples():
        mine = sizes[sizes["mutant"] == r.mutant]
        rows.append({"mutant": r.mutant, "score": r.wt_marginal, "dms": r.dms_score,
                     "full_effect": {int(s.layer): s.full_effect for s in mine.itertuples()},
                     "circuit": {int(s.layer): (None if pd.isna(s.n_features) else int(s.n_features))
                                 for s in mine.itertuples()},
                     "site_share": {layer: float(t.loc[t["mutant"] == r.mutant, "site_share"].iloc[0])
                                    if (t["mutant"] == r.mutant).any() else None for layer, t in shares.items()},
                     "graph": r.mutant in graphs})
    return rows


def feature_entries(keys: set[tuple[int, int]], labels: pd.DataFrame, concepts: pd.DataFrame,
                    examples: Mapping[int, pd.DataFrame], tops: pd.DataFrame, graphs: Mapping[str, dict],
                    cards: Mapping[tuple[int, int], str]) -> dict[str, dict]:
    """The feature pages' data, for the features the explorer links to."""
    neighbours: dict[str, dict[str, dict]] = {}
    for graph in graphs.values():
        for edge in graph["edges"]:
            for here, there, direction in ((edge["source"], edge["target"], "down"),
                                           (edge["target"], edge["source"], "up")):
                entry = neighbours.setdefault(here, {}).setdefault(there, {"id": there, "direction": direction,
                                                                            "n": 0, "sum_abs_M": 0.0})
                entry["n"] += 1
                entry["sum_abs_M"] += abs(edge["M"])
    out = {}
    by_key = labels.set_index(["layer", "feature"])
    for layer, feature in sorted(keys):
        if (layer, feature) not in by_key.index:
            continue
        row = by_key.loc[(layer, feature)]
        key = f"L{layer}_F{feature}"
        mine = concepts[(concepts["layer"] == layer) & (concepts["feature"] == feature)].sort_values(
            ["f1", "concept"], ascending=[False, True], kind="mergesort").head(CONCEPTS_PER_FEATURE)
        ex = examples.get(layer)
        ex = ex[ex["feature"] == feature].sort_values("rank") if ex is not None else pd.DataFrame()
        carried = tops[(tops["layer"] == layer) & (tops["feature"] == feature)].sort_values(
            "attribution", key=np.abs, ascending=False, kind="mergesort").head(MUTANTS_PER_FEATURE)
        out[key] = {
            "id": key, "layer": layer, "feature": feature, "label": str(row["label"]),
            "top_residue": row["top_residue"], "f1": row["f1"], "frequency": row["frequency"],
            "n_active": int(row["n_active"]), "identity": bool(row["identity"]),
            "top_concept": row["top_concept"] if isinstance(row["top_concept"], str) else "",
            "promotes": row["promotes"] if isinstance(row["promotes"], str) else "",
            "concepts": mine[["concept", "f1", "precision", "recall", "hits"]].to_dict("records"),
            "examples": ex[["rank", "record", "position", "activation", "window", "window_start",
                            "window_activations"]].to_dict("records") if len(ex) else [],
            "mutants": carried[["protein", "mutant", "rank", "attribution"]].to_dict("records"),
            "neighbours": sorted(neighbours.get(key, {}).values(), key=lambda n: -n["sum_abs_M"]),
            "card": cards.get((layer, feature)),
        }
    return out


def explorer_data(scores: Mapping[str, Path], sizes: str | Path, shares: Mapping[tuple[str, int], Path],
                  graph_dirs: Mapping[str, Path], labels: str | Path, concepts: str | Path,
                  examples: Mapping[int, Path], tops: Mapping[tuple[str, int], Path], findings: str | Path | None,
                  cards: Mapping[tuple[int, int], Path], layers: Mapping[str, list[int]], title: str) -> dict:
    """Everything the pages show, as one JSON-safe dict."""
    size_table = read_table(sizes, "circuit_sizes_labelled")
    graphs: dict[str, dict] = {}
    proteins = {}
    top_parts = []
    for (protein, layer), path in tops.items():
        top_parts.append(read_table(path, "ig_top").assign(protein=protein, layer=layer))
    top_table = pd.concat(top_parts, ignore_index=True) if top_parts else pd.DataFrame(
        columns=["protein", "mutant", "rank", "attribution", "layer", "feature"])
    for protein, path in scores.items():
        names = set()
        for file in sorted(Path(graph_dirs[protein]).glob("*.json")) if protein in graph_dirs else []:
            graph = json.loads(file.read_text())
            graphs[f"{protein}/{graph['mutant']}"] = graph
            names.add(graph["mutant"])
        per_layer = {layer: read_table(p, "positions_summary") for (q, layer), p in shares.items() if q == protein}
        proteins[protein] = {"mutants": mutant_rows(read_table(path, "scores"),
                                                    size_table[size_table["protein"] == protein], per_layer, names)}
    label_table = read_table(labels, "feature_labels")
    keys = {(int(n["layer"]), int(n["feature"])) for g in graphs.values() for n in g["nodes"]}
    keys |= set(cards) | {(int(r.layer), int(r.feature)) for r in top_table.itertuples()}
    example_tables = {layer: read_table(path, "feature_examples") for layer, path in examples.items()}
    features = feature_entries(keys, label_table, read_table(concepts, "feature_concepts"), example_tables,
                               top_table, graphs, {key: f"cards/{Path(p).name}" for key, p in cards.items()})
    for entry in features.values():  # what a feature's page links to, known here so that it needs no other file
        for row in entry["mutants"]:
            row["graph"] = f"{row['protein']}/{row['mutant']}" in graphs
        for row in entry["neighbours"]:
            row["linked"] = row["id"] in features
    forward = one_forward(itertools.chain(size_table["activations"], label_table["activations"],
                                          top_table.get("activations", ()),
                                          (g.get("activations") for g in graphs.values())), "explorer")
    return clean({"title": title, "activations": forward, "layers": layers, "proteins": proteins, "graphs": graphs,
                  "features": features,
                  "findings": read_table(findings, "findings").to_dict("records") if findings else []})


def split(data: dict) -> tuple[dict, dict[str, dict]]:
    """The index (``data.js``) and the parts (``data/…js`` by relative path) of :func:`explorer_data`'s dict."""
    index = {key: data[key] for key in ("title", "activations", "layers", "findings")}
    index |= {"proteins": {}, "feature_block": FEATURE_BLOCK, "feature_files": {}}
    parts: dict[str, dict] = {}
    graphs: dict[str, dict] = {}
    for key, graph in data["graphs"].items():
        protein, mutant = key.split("/", 1)
        graphs.setdefault(protein, {})[mutant] = graph
    for i, (name, protein) in enumerate(data["proteins"].items()):
        file = f"data/p{i}.js"
        parts[file] = {"kind": "protein", "name": name, "mutants": protein["mutants"], "graphs": graphs.get(name, {})}
        index["proteins"][name] = {"file": file, "n_mutants": len(protein["mutants"]),
                                   "n_graphs": sum(bool(m["graph"]) for m in protein["mutants"])}
    blocks: dict[str, dict] = {}
    for key, entry in data["features"].items():
        blocks.setdefault(f"L{entry['layer']}_B{entry['feature'] // FEATURE_BLOCK}", {})[key] = entry
    for i, (block, features) in enumerate(sorted(blocks.items())):
        file = f"data/f{i}.js"
        parts[file] = {"kind": "features", "features": features}
        index["feature_files"][block] = file
    return index, parts


def _json(value: dict) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def build_explorer(data: dict, cards: Mapping[tuple[int, int], Path], out_dir: str | Path) -> None:
    """Write the site: index.html, app.js and style.css (the package's), the cards, ``data/`` (every part, into a
    fresh folder that then replaces the old one, so that no part of an earlier run is left) and ``data.js``."""
    out_dir = Path(out_dir)
    (out_dir / "cards").mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "app.js", "style.css"):
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(STATIC / name, tmp)
    for path in cards.values():
        with atomic_path(out_dir / "cards" / Path(path).name) as tmp:
            shutil.copyfile(path, tmp)
    index, parts = split(data)
    fresh = out_dir / f".data-{uuid.uuid4().hex}"
    fresh.mkdir()  # as the user's umask allows (mkdtemp's would be private: colleagues could not open the site)
    try:
        for file, part in parts.items():
            (fresh / Path(file).name).write_text(f"window.EXPLORER_PART({_json(part)});\n", encoding="utf-8")
        shutil.rmtree(out_dir / "data", ignore_errors=True)
        fresh.rename(out_dir / "data")
    finally:
        shutil.rmtree(fresh, ignore_errors=True)  # gone already unless writing failed
    with atomic_path(out_dir / "data.js") as tmp:
        Path(tmp).write_text(f"window.EXPLORER = {_json(index)};\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    largest = max((p.stat().st_size for p in (out_dir / "data").iterdir()), default=0)
    log.info("explorer: %d proteins, %d graphs, %d features in %d data files (largest %.2f MB), %.1f MB in %s",
             len(data["proteins"]), len(data["graphs"]), len(data["features"]), len(parts), largest / 1e6,
             size / 1e6, out_dir)
