"""Integrated gradients over the SAE code at the mutated site(s), with an error node.

METHOD.md "Integrated gradients": along ``z(α) = z_wt + α (z_mut − z_wt)`` and
``e(α) = e_wt + α (ẽ_mut − e_wt)``,

* ``A_j = (z_mut_j − z_wt_j) · ∫₀¹ ∂S/∂z_j dα`` (summed over sites),
* ``A_err = ⟨ẽ_mut − e_wt, ∫₀¹ ∂S/∂e dα⟩``,
* ``T = S(z_mut, ẽ_mut) − S(z_wt, e_wt)``, and the completeness error
  ``|Σ A_j + A_err − T| / max(|T|, 1e-6)``.

In ``pre`` space the path runs over ``pre`` with TopK inside the decoder. With
``error_node: false`` (the seed) the error stays at ``e_wt`` and ``T`` is taken
at ``(z_mut, e_wt)``.

The quadrature is captum's ``IntegratedGradients`` (Gauss–Legendre or Riemann
rules). Captum is handed all steps of a mutant as one batch and sums their
gradients in one reduction; its forward function is the engine's
:meth:`Splice.run_in_passes`, which runs the steps through the model's upper
layers in passes that fit in memory. So the attributions do not depend on the
batch size, and gradients flow only to the intervened latents and error, never
to the model's weights.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from esmsae.engine import Splice
from esmsae.io import atomic_path
from esmsae.mutations import Mutant
from esmsae.patching import values
from esmsae.resume import WorkFolder, run_items
from esmsae.settings import IGSettings

log = logging.getLogger(__name__)

TOP_COLUMNS = ["mutant", "rank", "feature", "attribution"]


@dataclass(frozen=True)
class Attribution:
    """IG of one mutant's score over the SAE code at its sites."""

    mutant: str
    attribution: Tensor       # (d_sae,) A_j, summed over sites
    error_attribution: float  # A_err (0.0 without an error node)
    total_effect: float       # T
    completeness_error: float
    quadrature_delta: float   # captum's own Σ attributions − (F(end) − F(start))


def attribute(splice: Splice, mutant: Mutant, h_sites: Tensor, settings: IGSettings) -> Attribution:
    """Integrated gradients for one mutant at the splice's layer; `h_sites` is its (S, d) states."""
    wt = splice.wt_code([s.pos for s in mutant.sites])
    mut = splice.mutant_code(h_sites, wt)
    spec = splice.score_spec(mutant)
    space = settings.space
    start, end = values(wt, space).unsqueeze(0), values(mut, space).unsqueeze(0)
    error_change = (mut.error - wt.error).unsqueeze(0)

    rows = splice.batch_size or splice.rows_per_pass(grad=True)

    def score(v: Tensor, e: Tensor | None = None) -> Tensor:
        return splice.run_in_passes(wt.positions, splice.delta(wt, splice.latents(v, space), e), spec, rows)

    ig = IntegratedGradients(score)
    if settings.error_node:
        inputs, baselines = (end, error_change), (start, torch.zeros_like(error_change))
    else:
        inputs, baselines = (end,), (start,)
    while True:  # halve the steps per pass on running out of memory
        try:
            attrs, delta = ig.attribute(inputs, baselines=baselines, n_steps=settings.steps, method=settings.rule,
                                        return_convergence_delta=True)
            break
        except torch.OutOfMemoryError:
            if rows == 1:
                raise
            rows = max(1, rows // 2)
            log.warning("out of memory in IG: retrying with %d steps per pass", rows)
            if splice.lm.device.type == "cuda":
                torch.cuda.empty_cache()
    features = attrs[0][0].sum(0).detach()
    error = float(attrs[1].sum()) if settings.error_node else 0.0
    endpoint = splice.delta(wt, splice.latents(end, space), error_change if settings.error_node else None)
    with torch.no_grad():
        both = splice.run(wt.positions, torch.cat([torch.zeros_like(endpoint), endpoint]), spec)
    total = float(both[1] - both[0])
    gap = abs(float(features.sum()) + error - total) / max(abs(total), 1e-6)
    return Attribution(mutant=mutant.name, attribution=features, error_attribution=error, total_effect=total,
                       completeness_error=gap, quadrature_delta=float(delta.sum()))


def attribute_protein(splice: Splice, mutants: list[Mutant], settings: IGSettings,
                      work: WorkFolder | None = None) -> list[Attribution]:
    """IG for every mutant of one protein; the mutants' states come from one batched forward,
    and each mutant's result is kept in `work` as soon as it is done."""
    if not mutants:
        return []
    with torch.no_grad():
        h = splice.hidden([m.apply(splice.wt_seq) for m in mutants])

    def one(index: int) -> Attribution:
        mutant = mutants[index]
        result = attribute(splice, mutant, h[index, [s.pos for s in mutant.sites]], settings)
        log.info("L%d %s: T=%.4g, ΣA=%.4g, A_err=%.4g, completeness error %.2e", splice.layer, mutant.name,
                 result.total_effect, float(result.attribution.sum()), result.error_attribution,
                 result.completeness_error)
        return Attribution(**{**result.__dict__, "attribution": result.attribution.cpu()})

    return run_items([m.name for m in mutants], one, work, desc=f"IG L{splice.layer}")


def save_attributions(results: list[Attribution], path, *, settings: IGSettings, k: int, d_sae: int,
                      layer: int) -> None:
    """One ``.npz`` per (protein, layer): the arrays and the settings that made them."""
    arrays = {
        "mutant": np.array([r.mutant for r in results], dtype=str),
        "attribution": (torch.stack([r.attribution for r in results]).cpu().numpy().astype(np.float64)
                        if results else np.zeros((0, d_sae))),
        "error_attribution": np.array([r.error_attribution for r in results], dtype=np.float64),
        "total_effect": np.array([r.total_effect for r in results], dtype=np.float64),
        "completeness_error": np.array([r.completeness_error for r in results], dtype=np.float64),
        "quadrature_delta": np.array([r.quadrature_delta for r in results], dtype=np.float64),
        "steps": np.array(settings.steps), "rule": np.array(settings.rule), "space": np.array(settings.space),
        "k": np.array(k), "error_node": np.array(settings.error_node), "layer": np.array(layer),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # savez would append .npz to a temporary name; write the bytes instead
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_attributions(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def top_features(results: list[Attribution], n: int = 20) -> pd.DataFrame:
    """The n features with the largest |A_j| per mutant, for people to read."""
    rows = []
    for r in results:
        order = torch.argsort(r.attribution.abs(), descending=True, stable=True)[:n]
        rows += [{"mutant": r.mutant, "rank": rank, "feature": int(j), "attribution": float(r.attribution[j])}
                 for rank, j in enumerate(order.tolist(), start=1)]
    return pd.DataFrame(rows, columns=TOP_COLUMNS)
