"""Attribution patching (AtP): the first-order estimate of every feature's effect, one backward pass.

METHOD.md "Attribution agreement": ``A^atp_j = (z_mut_j − z_wt_j) · ∂S/∂z_j`` at ``(z_wt, e_wt)``,
and ``A^atp_err = ⟨ẽ_mut − e_wt, ∂S/∂e⟩`` there: integrated gradients with a single left-Riemann
step. One backward pass per mutant, through the engine's differentiable score (so its batching
and memory policy apply). Written in the IG file type (:class:`esmsae.analyses.arrays.Attributions`, steps
1, rule ``riemann_left``), so its completeness error says how far the linear estimate is off.
:mod:`esmsae.tables.agreement` compares it with exact patching and IG.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from esmsae.analyses.api import Analysis, LayerMeta
from esmsae.analyses.ig import Attribution, attributions_file, completeness_error
from esmsae.config.settings import IGSettings
from esmsae.model.view import MutantView

log = logging.getLogger(__name__)


def attribution_patching(view: MutantView, settings: IGSettings, context: None = None) -> Attribution:
    """AtP of one mutant at the view's layer, in the run's space; the error node as IG has it."""
    start, end = view.start.unsqueeze(0), view.end.unsqueeze(0)
    error_change = view.error_change.unsqueeze(0)

    def gradients(score):
        v = start.clone().requires_grad_(True)
        e = torch.zeros_like(error_change).requires_grad_(True) if settings.error_node else None
        inputs = [v] if e is None else [v, e]
        return torch.autograd.grad(score(v, e).sum(), inputs)

    grads = view.differentiate(gradients)
    features = ((end - start) * grads[0])[0].sum(0).detach()
    error = float((error_change * grads[1]).sum()) if settings.error_node else 0.0
    total = float(view.effects(end, error_change if settings.error_node else None).effects[0])
    return Attribution(mutant=view.mutant.name, attribution=features.cpu(),
                       abs_delta=(view.end - view.start).abs().sum(0).cpu(), error_attribution=error,
                       total_effect=total, completeness_error=completeness_error(float(features.sum()), error, total),
                       quadrature_delta=float("nan"))


def summary(r: Attribution) -> str:
    return f"T={r.total_effect:.4g}, ΣA_atp={float(r.attribution.sum()):.4g}, linear error {r.completeness_error:.2e}"


def write_atp(results: list[Attribution], outputs: Mapping[str, Path], settings: IGSettings, meta: LayerMeta) -> None:
    """Rule compute_atp's output: AtP in the IG file type (steps 1, rule riemann_left)."""
    attributions_file(results, steps=1, rule="riemann_left", space=settings.space, error_node=settings.error_node,
                      k=meta.k, d_sae=meta.d_sae, layer=meta.layer, activations=meta.activations).write(outputs["npz"])


ATP = Analysis(rule="compute_atp", settings=IGSettings, run=attribution_patching, write=write_atp, summary=summary)
