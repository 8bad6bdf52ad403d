"""Minimal circuits: how much of a mutation's effect the top-ranked features carry, and need.

METHOD.md "Minimal circuit": rank features by ``|A_j|`` (IG). The full effect is
``F = S_all − S(m)``, where ``S_all`` patches every feature (``z' = z_mut``, error at
WT). For n = 0, 1, …, ``max_k`` features:

* sufficiency: the top-n patched to their mutant values together (the rest and the
  error at WT) score ``S_n``; ``r_n = (S_n − S(m)) / F``;
* necessity: every feature *but* the top-n patched, ``S_−n``; ``c_n = (S_−n − S(m)) / F``
  (what is left without the circuit).

The minimal circuit is the smallest n with ``|r_n − 1| ≤ 1 − recover`` (within ±10 %
of the full effect by default; an overshoot is not a recovery), none if no n up to
``max_k`` gets there. A mutant with ``|F| < min_effect`` is negligible: its ratios
divide by almost nothing, so it gets no size. All n of a mutant, both curves, go
through the engine as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from esmsae.analysis import Analysis, LayerMeta
from esmsae.arrays import Attributions
from esmsae.columns import CURVE_COLUMNS, SIZE_COLUMNS
from esmsae.engine import MutantView
from esmsae.errors import InputError
from esmsae.io import write_csv
from esmsae.mutations import Mutant
from esmsae.settings import CircuitSettings


@dataclass(frozen=True)
class Curve:
    """One mutant's circuit curves and minimal circuit."""

    mutant: str
    n_features: np.ndarray           # 0..max_k (capped at d_sae)
    patched_score: np.ndarray        # S_n: the top-n features patched
    recovered_fraction: np.ndarray   # r_n (NaN when F = 0)
    complement_score: np.ndarray     # S_−n: every feature but the top-n patched
    complement_fraction: np.ndarray  # c_n (NaN when F = 0)
    baseline_score: float            # S(m)
    full_effect: float               # F = S_all − S(m)
    negligible: bool                 # |F| < min_effect
    minimal_size: float              # the smallest n with |r_n − 1| ≤ 1 − recover; NaN if none or negligible
    features: tuple[int, ...]        # the minimal circuit's features, ascending (empty if no size)


def minimal_size(recovered: np.ndarray, recover: float) -> float:
    """The smallest n whose ``r_n`` is within ``1 − recover`` of 1 (both ways), NaN if none.

    With recover 0.9: ``[0, 0.5, 1.3, 0.95]`` gives 3 (1.3 overshoots by 30 %), ``[0, 0.89]`` none.
    """
    r = np.asarray(recovered, dtype=np.float64)
    within = np.abs(r - 1) <= (1 - recover) + 1e-12  # a fraction exactly on the bound is within it
    hits = np.flatnonzero(within & np.isfinite(r))
    return float(hits[0]) if len(hits) else math.nan


def top_k_patches(start: Tensor, end: Tensor, attribution: Tensor, max_k: int) -> Tensor:
    """Rows (max_k + 1, S, d_sae): row k has the k features with the largest |A_j| at their `end` values."""
    order = torch.argsort(attribution.abs(), descending=True, stable=True)
    ks = min(max_k, attribution.shape[0])
    chosen = torch.zeros(ks + 1, attribution.shape[0], dtype=torch.bool, device=start.device)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    chosen[:] = rank.unsqueeze(0) < torch.arange(ks + 1, device=start.device).unsqueeze(1)
    return torch.where(chosen.unsqueeze(1), end.unsqueeze(0), start.unsqueeze(0))


def circuit_curve(view: MutantView, settings: CircuitSettings, attribution: Tensor) -> Curve:
    """Both curves for every n, and the full patch, in one engine batch."""
    start, end = view.start, view.end
    ranked = attribution.to(start.device)
    top = top_k_patches(start, end, ranked, settings.max_k)          # top-n at mutant values
    rest = top_k_patches(end, start, ranked, settings.max_k)         # top-n at WT, the rest at mutant values
    out = view.effects(torch.cat([top, rest, end.unsqueeze(0)]))
    effects = out.effects.double().cpu()
    scores = out.scores.double().cpu().numpy()
    n = top.shape[0]
    full = float(effects[-1])
    if full != 0:
        recovered, complement = (effects[:n] / full).numpy(), (effects[n:2 * n] / full).numpy()
    else:
        recovered = complement = np.full(n, np.nan)
    negligible = abs(full) < settings.min_effect
    size = math.nan if negligible else minimal_size(recovered, settings.recover)
    order = torch.argsort(ranked.abs(), descending=True, stable=True)
    features = () if math.isnan(size) else tuple(sorted(order[: int(size)].tolist()))
    return Curve(mutant=view.mutant.name, n_features=np.arange(n), patched_score=scores[:n],
                 recovered_fraction=recovered, complement_score=scores[n:2 * n], complement_fraction=complement,
                 baseline_score=float(out.baseline[-1]), full_effect=full, negligible=negligible,
                 minimal_size=size, features=features)


def ranked_by_ig(view: MutantView, settings: CircuitSettings, attributions: Mapping[str, Tensor]) -> Curve:
    """The circuit curve of one mutant, features ranked by its IG attribution at this layer."""
    return circuit_curve(view, settings, attributions[view.mutant.name])


def read_ig(inputs: Mapping[str, Path], mutants: list[Mutant], settings: CircuitSettings) -> dict[str, Tensor]:
    """The job's IG attributions by mutant; they must be of exactly the selected mutants."""
    ig = Attributions.read(inputs["npz"])
    if [m.name for m in mutants] != ig.mutant.tolist():
        raise InputError(f"{inputs['npz']}: its mutants do not match the selection in {inputs['scores']}; "
                         "rerun integrate_gradients")
    return {name: torch.as_tensor(row, dtype=torch.float32) for name, row in zip(ig.mutant.tolist(),
                                                                                 ig.attribution, strict=True)}


def summary(c: Curve) -> str:
    size = "negligible" if c.negligible else ("none" if math.isnan(c.minimal_size) else int(c.minimal_size))
    return f"full effect {c.full_effect:.4g}, minimal circuit {size}"


def curves_table(curves: list[Curve], meta: LayerMeta, space: str) -> pd.DataFrame:
    """Both curves of every mutant, one row per (mutant, n_features), with the settings."""
    frames = [pd.DataFrame({
        "mutant": c.mutant, "n_features": c.n_features, "patched_score": c.patched_score,
        "recovered_fraction": c.recovered_fraction, "complement_score": c.complement_score,
        "complement_fraction": c.complement_fraction, "full_effect": c.full_effect, "negligible": c.negligible,
        "layer": meta.layer, "k": meta.k, "d_sae": meta.d_sae, "space": space,
    }, columns=CURVE_COLUMNS) for c in curves]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)


def sizes_table(curves: list[Curve], meta: LayerMeta, space: str) -> pd.DataFrame:
    """One row per mutant: its full effect, whether it is negligible, and the minimal circuit's size
    (``n_features``, empty if none within max_k or negligible) with the fraction it recovers."""
    rows = []
    for c in curves:
        size = c.minimal_size
        rows.append({"protein": meta.protein, "layer": meta.layer, "mutant": c.mutant, "full_effect": c.full_effect,
                     "negligible": c.negligible, "n_features": size,
                     "recovered_fraction": math.nan if math.isnan(size) else float(c.recovered_fraction[int(size)]),
                     "features": ";".join(str(j) for j in c.features), "k": meta.k, "d_sae": meta.d_sae,
                     "space": space})
    table = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    table["n_features"] = table["n_features"].astype("Int64")
    return table


def write_curves(curves: list[Curve], outputs: Mapping[str, Path], settings: CircuitSettings,
                 meta: LayerMeta) -> None:
    """Rule find_circuits's outputs: the curves and the minimal sizes."""
    write_csv(curves_table(curves, meta, settings.space), outputs["curves"])
    write_csv(sizes_table(curves, meta, settings.space), outputs["sizes"])


CIRCUITS = Analysis(rule="find_circuits", settings=CircuitSettings, run=ranked_by_ig, write=write_curves,
                    summary=summary, context=read_ig)
