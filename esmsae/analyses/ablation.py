"""Rule ablate_feature_sets: does the model's prediction of the whole assay rely on the features a study names?

METHOD.md "Feature-set ablation against the assay". At layer ℓ, ablating a set A replaces, at
every residue position p of the WT sequence, ``h_p → h_p − Σ_{j∈A} z_j(p) · w_dec_j · σ_p`` (the
features' decoded contribution removed; the error and every other feature kept): in the engine's
terms, the latents of A set to 0 at every residue. One ablated WT forward gives the WT-marginal
score of every single substitution of the protein's scores table (variant ``positions: site``:
ablate only at the scored position, one engine row per position).

The sets, per protein and layer (:func:`feature_sets`): ``circuit`` (the union of the protein's
minimal-circuit features at ℓ), ``universal`` (ℓ's universal features), ``identity`` (ℓ's identity
features), ``top`` (the ``top_n`` features with the largest mean |A_j| over the protein's mutants;
by default as many as the circuit set has). Each comes with ``n_null`` random sets of its size
(:func:`null_sets`): each member replaced by a feature drawn without replacement from the same
activation-frequency decile, excluding the set itself, seeded. One unit of work (a resume piece, one
batch in the engine) is a set with its nulls. The statistics — ρ with DMS, Δρ, ρ(clean, ablated),
mean |Δ score|, the nulls' spread and the empirical p — are the table rule's
(:mod:`esmsae.tables.ablation`).
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae.analyses.api import Analysis, LayerMeta
from esmsae.analyses.arrays import Attributions
from esmsae.config.settings import AblationSettings
from esmsae.inputs.mutations import AMINO_ACIDS, Mutant
from esmsae.model.view import WTView
from esmsae.pipeline.columns import read_table
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import atomic_path

log = logging.getLogger(__name__)

DECILES = 10


@dataclass(frozen=True)
class AblationContext:
    """What a job ablates: its sets and their nulls, and the singles it scores (from the scores table)."""

    sets: dict[str, list[int]]
    nulls: dict[str, list[list[int]]]
    mutants: list[str]
    positions: np.ndarray   # (n,) 1-based residue positions of the singles
    wt: np.ndarray          # (n,) index into AMINO_ACIDS of the WT residue
    mut: np.ndarray         # (n,) index into AMINO_ACIDS of the mutant residue
    dms: np.ndarray         # (n,) DMS score, NaN where none


@dataclass(frozen=True)
class SetAblation:
    """One set and its nulls ablated: every single's score with each, and clean."""

    name: str
    features: list[int]
    null_features: list[list[int]]
    scores: np.ndarray      # (1 + n_null, n): the set's, then each null's
    clean: np.ndarray       # (n,)
    mutants: list[str]      # the n singles scored, and their DMS scores (NaN where none)
    dms: np.ndarray


def frequency_deciles(frequency: np.ndarray, deciles: int = DECILES) -> np.ndarray:
    """Each feature's activation-frequency decile (0..deciles−1): features sorted by frequency (ties by index)
    and cut into `deciles` groups of as equal size as possible, lowest frequencies first."""
    order = np.lexsort((np.arange(len(frequency)), np.asarray(frequency, dtype=np.float64)))
    groups = np.empty(len(frequency), dtype=np.int64)
    for decile, members in enumerate(np.array_split(order, deciles)):
        groups[members] = decile
    return groups


class NullUndrawable(ValueError):
    """A set too large for its deciles: some decile has fewer free features than the set has members in it."""


def null_sets(features: list[int], deciles: np.ndarray, n_null: int, rng: np.random.Generator) -> list[list[int]]:
    """`n_null` random sets of `features`' size: member i replaced by a feature of the same decile, drawn
    without replacement within the set, never one of `features`. A decile without a free feature raises
    :class:`NullUndrawable`."""
    chosen = set(features)
    out = []
    for _ in range(n_null):
        taken: set[int] = set()
        draw = []
        for feature in features:
            pool = np.flatnonzero(deciles == deciles[feature])
            pool = np.array([j for j in pool.tolist() if j not in chosen and j not in taken], dtype=np.int64)
            if not len(pool):
                raise NullUndrawable(f"feature {feature}: no feature of its activation-frequency decile is left to "
                                     f"draw for a null set of size {len(features)}; the set is too large for its "
                                     "decile")
            pick = int(rng.choice(pool))
            taken.add(pick)
            draw.append(pick)
        out.append(sorted(draw))
    return out


def set_rng(seed: int, protein: str, layer: int, name: str) -> np.random.Generator:
    """A generator fixed by the run's seed and the (protein, layer, set) it serves."""
    return np.random.default_rng([seed, layer, zlib.crc32(protein.encode()), zlib.crc32(name.encode())])


def feature_sets(protein: str, layer: int, d_sae: int, settings: AblationSettings, circuits: pd.DataFrame,
                 universal: pd.DataFrame, labels: pd.DataFrame, ig: Attributions) -> dict[str, list[int]]:
    """The sets of METHOD.md, for one protein and layer; a feature outside the SAE is an error naming its table."""
    here = (circuits["protein"] == protein) & (circuits["layer"] == layer)
    mine = circuits[here & ~circuits["negligible"].astype(bool)]
    circuit = sorted({int(j) for text in mine["features"].fillna("").astype(str) for j in text.split(";") if j})
    at = labels[labels["layer"] == layer]
    sets = {
        "circuit": circuit,
        "universal": sorted(int(j) for j in universal.loc[universal["layer"] == layer, "feature"]),
        "identity": sorted(int(j) for j in at.loc[at["identity"].astype(bool), "feature"]),
    }
    n_top = settings.top_n if settings.top_n is not None else len(circuit)
    mean_abs = np.abs(np.asarray(ig.attribution, dtype=np.float64)).mean(0) if ig.n else np.zeros(d_sae)
    order = np.lexsort((np.arange(len(mean_abs)), -mean_abs))
    sets["top"] = sorted(int(j) for j in order[:n_top] if mean_abs[j] > 0)
    for name, members in sets.items():
        bad = [j for j in members if not 0 <= j < d_sae]
        if bad:
            raise InputError(f"ablation set {name!r} of {protein} at layer {layer}: feature(s) {bad} outside the "
                             f"SAE's 0..{d_sae - 1} (tables of another SAE?)")
    return {name: sets[name] for name in settings.sets}


def read_context(inputs: Mapping[str, Path], mutants: list[Mutant], settings: AblationSettings) -> dict:
    """The job's tables, read once: the sets are built when the engine (and so d_sae) is known."""
    scores = read_table(inputs["scores"], "scores")
    singles = scores[~scores["mutant"].astype(str).str.contains(":")]
    index = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
    return {"inputs": inputs, "settings": settings,
            "circuits": read_table(inputs["circuits"], "circuit_sizes_labelled"),
            "universal": read_table(inputs["universal"], "universal_features"),
            "labels": read_table(inputs["labels"], "feature_labels"), "ig": Attributions.read(inputs["ig"]),
            "mutants": singles["mutant"].astype(str).tolist(),
            "positions": singles["position"].astype(int).to_numpy(),
            "wt": singles["wt"].map(index).to_numpy(dtype=np.int64),
            "mut": singles["mut"].map(index).to_numpy(dtype=np.int64),
            "dms": singles["dms_score"].to_numpy(dtype=np.float64)}


def prepared(view: WTView, raw: dict) -> AblationContext:
    """The context with the sets and nulls of the view's protein and layer (built once per job)."""
    if "prepared" not in raw:
        settings, d_sae = raw["settings"], view.engine.sae.info.d_sae
        sets = feature_sets(view.protein, view.layer, d_sae, settings, raw["circuits"], raw["universal"],
                            raw["labels"], raw["ig"])
        labels = raw["labels"][raw["labels"]["layer"] == view.layer].sort_values("feature")
        if len(labels) != d_sae:
            raise InputError(f"{raw['inputs']['labels']}: {len(labels)} features at layer {view.layer}, the SAE has "
                             f"{d_sae}")
        deciles = frequency_deciles(labels["frequency"].to_numpy(dtype=np.float64))
        nulls = {}
        for name, members in sets.items():
            try:
                nulls[name] = null_sets(members, deciles, settings.n_null,
                                        set_rng(settings.seed, view.protein, view.layer, name))
            except NullUndrawable as error:  # a small SAE, a large set: reported without a null, never skipped
                log.warning("%s layer %d, set %r: no frequency-matched null (%s); its null statistics and p are "
                            "NaN and its n_null is 0", view.protein, view.layer, name, error)
                nulls[name] = []
        raw["prepared"] = AblationContext(sets=sets, nulls=nulls, mutants=raw["mutants"], positions=raw["positions"],
                                          wt=raw["wt"], mut=raw["mut"], dms=raw["dms"])
    return raw["prepared"]


def units(context: dict, settings: AblationSettings) -> list[str]:
    return list(settings.sets)


def ablate(view: WTView, settings: AblationSettings, context: dict) -> SetAblation:
    """One set and its nulls: every single's WT-marginal score with each ablated, one engine row per set
    (``every``) or per set and position (``site``), all in the engine's batches."""
    ctx = prepared(view, context)
    members = [ctx.sets[view.unit], *ctx.nulls[view.unit]]
    z = view.code.z  # (L, d_sae)
    length = z.shape[0]
    tokens = torch.tensor([view.engine.lm.token_index(a) for a in AMINO_ACIDS], device=z.device)
    if settings.positions == "every":
        rows = z.expand(len(members), -1, -1).clone()
        for r, features in enumerate(members):
            if features:
                rows[r, :, features] = 0.0
    else:  # one row per (set, position): the set removed at that position only
        rows = z.expand(len(members) * length, -1, -1).clone()
        for r, features in enumerate(members):
            if features:
                for p in range(length):
                    rows[r * length + p, p, features] = 0.0
    logp, base = view.log_probs(rows, tokens)
    at = torch.as_tensor(ctx.positions - 1, device=z.device)
    wt, mut = torch.as_tensor(ctx.wt, device=z.device), torch.as_tensor(ctx.mut, device=z.device)
    clean = (base[0, at, mut] - base[0, at, wt]).double().cpu().numpy()
    if settings.positions == "every":
        scores = logp[:, at, mut] - logp[:, at, wt]
    else:
        by_position = logp.reshape(len(members), length, length, -1)  # (set, ablated position, read position, A)
        scores = by_position[:, at, at, mut] - by_position[:, at, at, wt]
    return SetAblation(name=view.unit, features=ctx.sets[view.unit], null_features=ctx.nulls[view.unit],
                       scores=scores.double().cpu().numpy(), clean=clean, mutants=ctx.mutants, dms=ctx.dms)


def summary(result: SetAblation) -> str:
    delta = np.abs(result.scores - result.clean[None, :]).mean(1)
    null = float(delta[1:].mean()) if len(delta) > 1 else float("nan")
    return (f"set {result.name}: {len(result.features)} features, mean |Δ score| {delta[0]:.4g} "
            f"(nulls {null:.4g})")


def write_ablation(results: list[SetAblation], outputs: Mapping[str, Path], settings: AblationSettings,
                   meta: LayerMeta) -> None:
    """``ablation/{protein}_L{layer}.npz``: per row (a set, then its nulls) its name, draw (−1 for the set
    itself), size and features (padded with −1), and every single's score; the singles, their clean and DMS
    scores, and the settings."""
    names, draws, members = [], [], []
    for result in results:
        for draw, features in enumerate([result.features, *result.null_features], start=-1):
            names.append(result.name)
            draws.append(draw)
            members.append(features)
    padded = np.full((len(members), max([len(m) for m in members] + [1])), -1, dtype=np.int64)
    for r, features in enumerate(members):
        padded[r, :len(features)] = features
    first = results[0]
    arrays = {"set": np.array(names), "draw": np.array(draws, dtype=np.int64),
              "size": np.array([len(m) for m in members], dtype=np.int64), "features": padded,
              "scores": np.concatenate([r.scores for r in results]), "clean": first.clean,
              "mutant": np.array(first.mutants), "dms": first.dms,
              "protein": np.array(meta.protein), "layer": np.array(meta.layer), "k": np.array(meta.k),
              "d_sae": np.array(meta.d_sae), "activations": np.array(meta.activations),
              "n_null": np.array(settings.n_null), "positions": np.array(settings.positions),
              "seed": np.array(settings.seed)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_path(outputs["npz"]) as tmp:
        tmp.write_bytes(buffer.getvalue())


ABLATION = Analysis(rule="ablate_feature_sets", settings=AblationSettings, run=ablate, write=write_ablation,
                    summary=summary, context=read_context, units=units)
