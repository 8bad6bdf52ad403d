"""Rule tabulate_concepts: how well each feature's activity matches each biological concept (METHOD.md "Concepts").

A concept is a named set of a protein's WT residue positions (:mod:`esmsae.inputs.annotations`: the
UniProt GFF3 features of ``proteins.NAME.annotations``, and ``dms_sensitive`` from the assay). A
feature is active at a position when ``z_j > 0`` (its WT latents, from the activity pass). Per
feature and concept ``c``, pooled over the proteins that have the concept's source (a GFF for UniProt
concepts, an assay for ``dms_sensitive``): ``hits`` = active positions in ``c``, ``n_active`` =
active positions of those proteins, ``|c|`` = positions in ``c``;
``P = hits / n_active``, ``R = hits / |c|``, ``F1 = 2·hits / (n_active + |c|)`` — written so that equal
ratios are equal numbers. Only (feature, concept) pairs with a hit are listed. Nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.analyses.arrays import Activity
from esmsae.inputs.annotations import DMS_SENSITIVE, dms_sensitive, read_gff
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.io import write_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConceptSource:
    """One protein's concepts and where they come from (``uniprot`` or ``dms``)."""

    protein: str
    source: str
    positions: dict[str, set[int]]


def concept_statistics(activity: Activity, sources: list[ConceptSource]) -> pd.DataFrame:
    """``TABLES["feature_concepts"]`` rows of one layer: every (feature, concept) with a hit, ordered by feature
    then concept. Concepts of the same name from several proteins of one source are pooled."""
    by_concept: dict[str, list[tuple[str, set[int]]]] = {}
    proteins_of: dict[str, set[str]] = {}
    for src in sources:
        proteins_of.setdefault(src.source, set()).add(src.protein)
        for name, positions in src.positions.items():
            by_concept.setdefault(name, []).append((src.protein, positions))
    source_of = {name: src.source for src in sources for name in src.positions}
    active = {protein: np.asarray(z) > 0 for protein, z in activity.wt_latents.items()}
    missing = sorted({src.protein for src in sources} - set(active))
    if missing:
        raise ValueError(f"layer {activity.layer}: no WT latents for {missing} in the activity file")
    parts = []
    for name in sorted(by_concept):
        proteins = sorted(proteins_of[source_of[name]])
        n_active = sum(active[p].sum(0) for p in proteins).astype(np.int64)
        hits = np.zeros(activity.d_sae, dtype=np.int64)
        size = 0
        for protein, positions in by_concept[name]:
            rows = np.array(sorted(positions), dtype=np.int64) - 1
            hits += active[protein][rows].sum(0)
            size += len(rows)
        has = np.flatnonzero(hits > 0)
        if not len(has):
            continue
        h, n = hits[has].astype(np.float64), n_active[has].astype(np.float64)
        parts.append(pd.DataFrame({"layer": activity.layer, "feature": has, "concept": name, "n_concept": size,
                                   "n_active": n_active[has], "hits": hits[has], "precision": h / n,
                                   "recall": h / size, "f1": 2 * h / (n + size), "k": activity.k,
                                   "d_sae": activity.d_sae, "activations": activity.activations}))
    if not parts:
        return pd.DataFrame(columns=TABLES["feature_concepts"])
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["feature", "concept"], kind="mergesort").reset_index(drop=True)[
        TABLES["feature_concepts"]]


def top_concepts(concepts: pd.DataFrame, layer: int, d_sae: int) -> tuple[list[str], np.ndarray]:
    """Each feature's concept with the largest F1 (ties: alphabetical) and that F1; "" and NaN where none."""
    names, f1 = [""] * d_sae, np.full(d_sae, np.nan)
    rows = concepts[concepts["layer"] == layer].sort_values(["feature", "f1", "concept"],
                                                            ascending=[True, False, True], kind="mergesort")
    for row in rows.drop_duplicates("feature").itertuples():
        names[int(row.feature)], f1[int(row.feature)] = str(row.concept), float(row.f1)
    return names, f1


def concept_sources(proteins: Mapping[str, Mapping], annotations: Mapping[str, Path],
                    scores: Mapping[str, Path]) -> list[ConceptSource]:
    """Every protein's concepts: its GFF's (those in `annotations`) and ``dms_sensitive`` (those whose scores
    table is in `scores`: the proteins with an assay, unless ``features.dms_sensitive`` is off). `proteins`
    maps names to ``{"length", "offset"}``."""
    out = []
    for protein, info in proteins.items():
        if protein in annotations:
            concepts = read_gff(annotations[protein], info["length"], info["offset"])
            log.info("%s: %d UniProt concepts from %s; %d features outside the WT sequence dropped, %d clipped",
                     protein, len(concepts.positions), annotations[protein], concepts.dropped, concepts.clipped)
            out.append(ConceptSource(protein, "uniprot", concepts.positions))
        if protein in scores:
            sensitive = dms_sensitive(read_table(scores[protein], "scores"))
            if sensitive:
                out.append(ConceptSource(protein, "dms", {DMS_SENSITIVE: sensitive}))
                log.info("%s: %d dms_sensitive residues (lowest quartile of site means)", protein, len(sensitive))
    return out


def tabulate_concepts(activity: Mapping[int, Path], proteins: Mapping[str, Mapping], annotations: Mapping[str, Path],
                      scores: Mapping[str, Path], out: str | Path) -> None:
    """Rule tabulate_concepts: ``tables/feature_concepts.csv`` over every analysed layer."""
    sources = concept_sources(proteins, annotations, scores)
    parts = [concept_statistics(Activity.read(path), sources) for _, path in sorted(activity.items())]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLES["feature_concepts"])
    log.info("%d (layer, feature, concept) pairs with a hit over %d concept sources", len(table), len(sources))
    write_csv(table[TABLES["feature_concepts"]], out)
