"""Minimal circuits: how much of a mutation's effect the top-ranked features carry, and need.

METHOD.md "Minimal circuit": rank features by ``|A_j|`` (IG). The full effect is
``F = S_all − S(m)``, where ``S_all`` patches every feature (``z' = z_mut``, error at
WT). For n = 0, 1, …, ``max_k`` features:

* sufficiency: the top-n patched to their mutant values together (the rest and the
  error at WT) score ``S_n``; ``r_n = (S_n − S(m)) / F``;
* necessity: every feature *but* the top-n patched, ``S_−n``; ``c_n = (S_−n − S(m)) / F``
  (what is left without the circuit).

All n of a mutant, both curves, go through the engine as one batch. The curves
record which feature joins the circuit at each n, so the minimal circuit — the smallest
n with ``|r_n − 1| ≤ 1 − recover``, none for a negligible mutant (``|F| < min_effect``) —
is read off them by :func:`esmsae.tables.circuits.circuit_sizes_from_curves`
without the model: changing those thresholds never reruns this measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from esmsae.analyses.api import Analysis, LayerMeta
from esmsae.analyses.arrays import Attributions
from esmsae.config.settings import CircuitSettings
from esmsae.inputs.mutations import Mutant
from esmsae.model.view import MutantView
from esmsae.pipeline.columns import CURVE_COLUMNS
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import write_csv


@dataclass(frozen=True)
class Curve:
    """One mutant's circuit curves."""

    mutant: str
    n_features: np.ndarray           # 0..max_k (capped at d_sae)
    feature: np.ndarray              # the feature ranked n-th by |A_j|, which joins the circuit at n (-1 at n = 0)
    patched_score: np.ndarray        # S_n: the top-n features patched
    recovered_fraction: np.ndarray   # r_n (NaN when F = 0)
    complement_score: np.ndarray     # S_−n: every feature but the top-n patched
    complement_fraction: np.ndarray  # c_n (NaN when F = 0)
    baseline_score: float            # S(m)
    full_effect: float               # F = S_all − S(m)


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
    order = torch.argsort(ranked.abs(), descending=True, stable=True)  # the order top_k_patches adds them in
    joining = np.concatenate([[-1], order[: n - 1].cpu().numpy()]).astype(np.int64)
    return Curve(mutant=view.mutant.name, n_features=np.arange(n), feature=joining, patched_score=scores[:n],
                 recovered_fraction=recovered, complement_score=scores[n:2 * n], complement_fraction=complement,
                 baseline_score=float(out.baseline[-1]), full_effect=full)


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
    n = int(c.n_features[-1])
    return f"full effect {c.full_effect:.4g}, top-{n} recover r = {c.recovered_fraction[-1]:.3g}"


def curves_table(curves: list[Curve], meta: LayerMeta, space: str) -> pd.DataFrame:
    """Both curves of every mutant, one row per (mutant, n_features), with the settings."""
    frames = [pd.DataFrame({
        "mutant": c.mutant, "n_features": c.n_features,
        "feature": pd.array([pd.NA if f < 0 else int(f) for f in c.feature], dtype="Int64"),
        "patched_score": c.patched_score,
        "recovered_fraction": c.recovered_fraction, "complement_score": c.complement_score,
        "complement_fraction": c.complement_fraction, "full_effect": c.full_effect,
        "layer": meta.layer, "k": meta.k, "d_sae": meta.d_sae, "space": space, "activations": meta.activations,
    }, columns=CURVE_COLUMNS) for c in curves]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CURVE_COLUMNS)


def write_curves(curves: list[Curve], outputs: Mapping[str, Path], settings: CircuitSettings,
                 meta: LayerMeta) -> None:
    """Rule find_circuits's output: the curves."""
    write_csv(curves_table(curves, meta, settings.space), outputs["curves"])


CIRCUITS = Analysis(rule="find_circuits", settings=CircuitSettings, run=ranked_by_ig, write=write_curves,
                    summary=summary, context=read_ig)
