"""Minimal circuits: how much of a mutation's effect the top-k attributed features carry.

METHOD.md "Minimal circuit": rank features by ``|A_j|``; for k = 0, 1, …, ``max_k``
patch the top-k features to their mutant values together (the rest and the error
at WT) and score ``S_k``. The recovered fraction is
``r_k = (S_k − S(m)) / (S_all − S(m))`` where ``S_all`` patches every feature
(``z' = z_mut``, error at WT); the minimal circuit is the smallest k with
``r_k ≥ recover``. All k of a mutant go through the engine as one batch.
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
    """One mutant's circuit curve."""

    mutant: str
    k: np.ndarray                  # 0..max_k
    patched_score: np.ndarray      # S_k
    recovered_fraction: np.ndarray  # r_k (NaN when S_all = S(m))
    total_effect: float            # S_all − S(m)
    minimal_k: float               # smallest k with r_k ≥ recover, NaN if none


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
    """Patch the top-k features by ``|attribution|`` for every k (and all features) in one engine batch."""
    start, end = view.start, view.end
    rows = torch.cat([top_k_patches(start, end, attribution.to(start.device), settings.max_k), end.unsqueeze(0)])
    out = view.effects(rows)
    effects = out.effects.double().cpu()
    total = float(effects[-1])
    curve = effects[:-1] / total if total != 0 else torch.full_like(effects[:-1], float("nan"))
    reached = torch.nonzero(curve >= settings.recover).flatten()
    return Curve(mutant=view.mutant.name, k=np.arange(len(curve)),
                 patched_score=out.scores[:-1].double().cpu().numpy(), recovered_fraction=curve.numpy(),
                 total_effect=total, minimal_k=float(reached[0]) if len(reached) else math.nan)


def ranked_by_ig(view: MutantView, settings: CircuitSettings, attributions: Mapping[str, Tensor]) -> Curve:
    """The circuit curve of one mutant, features ranked by its IG attribution at this layer."""
    return circuit_curve(view, settings, attributions[view.mutant.name])


def read_ig(inputs: Mapping[str, Path], mutants: list[Mutant]) -> dict[str, Tensor]:
    """The job's IG attributions by mutant; they must be of exactly the selected mutants."""
    ig = Attributions.read(inputs["npz"])
    if [m.name for m in mutants] != ig.mutant.tolist():
        raise InputError(f"{inputs['npz']}: its mutants do not match the selection in {inputs['scores']}; "
                         "rerun integrate_gradients")
    return {name: torch.as_tensor(row, dtype=torch.float32) for name, row in zip(ig.mutant.tolist(),
                                                                                 ig.attribution, strict=True)}


def summary(c: Curve) -> str:
    return f"total effect {c.total_effect:.4g}, minimal circuit {c.minimal_k}"


def curves_table(curves: list[Curve]) -> pd.DataFrame:
    frames = [pd.DataFrame({"mutant": c.mutant, "k": c.k, "patched_score": c.patched_score,
                            "recovered_fraction": c.recovered_fraction}) for c in curves]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)


def sizes_table(protein: str, layer: int, curves: list[Curve]) -> pd.DataFrame:
    """Minimal circuit size per mutant; empty where none within max_k. ``total_effect`` is ``S_all − S(m)``."""
    rows = [{"protein": protein, "layer": layer, "mutant": c.mutant, "total_effect": c.total_effect,
             "minimal_k": c.minimal_k} for c in curves]
    table = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    table["minimal_k"] = table["minimal_k"].astype("Int64")
    return table



def write_curves(curves: list[Curve], outputs: Mapping[str, Path], settings: CircuitSettings,
                 meta: LayerMeta) -> None:
    """Rule find_circuits's outputs: the curves and the minimal sizes."""
    write_csv(curves_table(curves), outputs["curves"])
    write_csv(sizes_table(meta.protein, meta.layer, curves), outputs["sizes"])


CIRCUITS = Analysis(rule="find_circuits", settings=CircuitSettings, run=ranked_by_ig, write=write_curves,
                    summary=summary, context=read_ig)
