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
gradients in one reduction; its forward function is the engine's differentiable
score (:meth:`MutantView.differentiate`), which runs the steps through the model's
upper layers in checkpointed passes that fit in memory. So the attributions do not depend on the
batch size, and gradients flow only to the intervened latents and error, never
to the model's weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from esmsae.analyses.api import Analysis, LayerMeta, analyse
from esmsae.analyses.arrays import Attributions
from esmsae.config.settings import IGSettings
from esmsae.inputs.mutations import Mutant
from esmsae.model.splice import Splice
from esmsae.model.view import MutantView
from esmsae.pipeline.resume import WorkFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attribution:
    """IG of one mutant's score over the SAE code at its sites."""

    mutant: str
    attribution: Tensor       # (d_sae,) A_j, summed over sites
    abs_delta: Tensor         # (d_sae,) Σ_sites |end − start|: how far each feature moves along the path
    error_attribution: float  # A_err (0.0 without an error node)
    total_effect: float       # T
    completeness_error: float
    quadrature_delta: float   # captum's own Σ attributions − (F(end) − F(start))


def attribute(view: MutantView, settings: IGSettings, context: None = None) -> Attribution:
    """Integrated gradients for one mutant at the view's layer."""
    start, end = view.start.unsqueeze(0), view.end.unsqueeze(0)
    error_change = view.error_change.unsqueeze(0)
    if settings.error_node:
        inputs, baselines = (end, error_change), (start, torch.zeros_like(error_change))
    else:
        inputs, baselines = (end,), (start,)

    def integrate(score):
        return IntegratedGradients(score).attribute(inputs, baselines=baselines, n_steps=settings.steps,
                                                    method=settings.rule, return_convergence_delta=True)

    attrs, delta = view.differentiate(integrate)
    features = attrs[0][0].sum(0).detach()
    error = float(attrs[1].sum()) if settings.error_node else 0.0
    total = float(view.effects(end, error_change if settings.error_node else None).effects[0])
    return Attribution(mutant=view.mutant.name, attribution=features.cpu(),
                       abs_delta=(view.end - view.start).abs().sum(0).cpu(), error_attribution=error,
                       total_effect=total, completeness_error=completeness_error(float(features.sum()), error, total),
                       quadrature_delta=float(delta.sum()))


def completeness_error(features: float, error: float, total: float) -> float:
    """``|Σ_j A_j + A_err − T| / max(|T|, 1e-6)``: e.g. 0.49 + 0.01 against T = 0.4 is 0.1 / 0.4 = 0.25."""
    return abs(features + error - total) / max(abs(total), 1e-6)


def summary(r: Attribution) -> str:
    return (f"T={r.total_effect:.4g}, ΣA={float(r.attribution.sum()):.4g}, A_err={r.error_attribution:.4g}, "
            f"completeness error {r.completeness_error:.2e}")


def write_attributions(results: list[Attribution], outputs: Mapping[str, Path], settings: IGSettings,
                       meta: LayerMeta) -> None:
    """Rule integrate_gradients's output: the arrays (npz); the top-feature tables come from them later,
    with the features' labels (rule tabulate_top_features)."""
    errors = np.array([r.completeness_error for r in results])
    log.info("%s L%d: %d mutants, steps=%d rule=%s space=%s error_node=%s, median completeness error %.3g",
             meta.protein, meta.layer, len(results), settings.steps, settings.rule, settings.space,
             settings.error_node, float(np.median(errors)) if len(errors) else float("nan"))
    arrays = attributions_file(results, steps=settings.steps, rule=settings.rule, space=settings.space,
                               error_node=settings.error_node, k=meta.k, d_sae=meta.d_sae, layer=meta.layer,
                               activations=meta.activations)
    arrays.write(outputs["npz"])


IG = Analysis(rule="integrate_gradients", settings=IGSettings, run=attribute, write=write_attributions,
              summary=summary)


def attribute_protein(splice: Splice, mutants: list[Mutant], settings: IGSettings,
                      work: WorkFolder | None = None) -> list[Attribution]:
    """IG for every mutant of one protein at the splice's layer."""
    return analyse(IG, splice, mutants, settings, work=work)


def attributions_file(results: list[Attribution], *, steps: int, rule: str, space: str, error_node: bool, k: int,
                      d_sae: int, layer: int, activations: str) -> Attributions:
    """One protein's results at one layer as its file type, with the settings that made them
    (the quadrature's `steps` and `rule`, the `space`, `error_node`, the SAE's `k` and `d_sae`, the forward
    its `activations` come from)."""
    return Attributions(
        mutant=np.array([r.mutant for r in results], dtype=str),
        attribution=(torch.stack([r.attribution for r in results]).cpu().numpy().astype(np.float64)
                     if results else np.zeros((0, d_sae))),
        abs_delta=(torch.stack([r.abs_delta for r in results]).cpu().numpy().astype(np.float64)
                   if results else np.zeros((0, d_sae))),
        error_attribution=np.array([r.error_attribution for r in results], dtype=np.float64),
        total_effect=np.array([r.total_effect for r in results], dtype=np.float64),
        completeness_error=np.array([r.completeness_error for r in results], dtype=np.float64),
        quadrature_delta=np.array([r.quadrature_delta for r in results], dtype=np.float64),
        steps=steps, rule=rule, space=space, k=k, d_sae=d_sae, error_node=error_node, layer=layer,
        activations=activations,
    )
