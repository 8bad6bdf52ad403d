"""Activation patching of SAE features at the mutated site, with controls.

METHOD.md "Activation patching": for a mutant and a layer, each feature j whose
patch changes the latent vector is set to its mutant value (all other features
and the error at WT values) and ``effect_j = S' − S(m)``. Controls run beside
the real patches, in the same engine batches:

* ``noop``   — the same features set to their WT values: exactly 0.0 (a check of
  the engine, not of the model);
* ``stable`` — among the features active at the site(s) in the WT or the mutant,
  the ``stable_n`` with the smallest ``|pre_mut − pre_wt|`` (summed over sites),
  each set alone to its mutant value. It may overlap the real set; expected small,
  not exactly 0. (Picked outside the changed set, as the seed did, it would be a
  no-op by construction: those features' latents do not move.)
* ``random`` — for each real patch, a feature outside the changed set (seeded
  RNG) whose *latent* is raised by the real feature's ``|z_mut_j − z_wt_j|`` at
  each site: does any perturbation of that size move the score? A latent-space
  perturbation in both spaces (in ``pre`` space a shifted pre-activation of an
  inactive feature almost never survives TopK, so the control would be vacuous).

In ``latent`` space a patch writes ``z`` directly; in ``pre`` space it writes
``pre`` and TopK is applied again (METHOD.md "Intervention space"); ``random``
rows always write ``z``, so their ``patched_value`` is a latent.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from esmsae.analyses.api import Analysis, LayerMeta, analyse
from esmsae.config.settings import PatchSettings
from esmsae.inputs.mutations import Mutant
from esmsae.model.splice import Splice
from esmsae.model.view import MutantView
from esmsae.pipeline.columns import CONTROLS, PATCH_COLUMNS
from esmsae.pipeline.io import write_csv
from esmsae.pipeline.resume import WorkFolder

log = logging.getLogger(__name__)


def changed_features(view: MutantView, chunk: int = 256) -> Tensor:
    """Features whose patch to the mutant value changes the latent vector, ascending.

    ``latent``: ``z_mut_j ≠ z_wt_j`` at some site — always inside the union of the
    WT and mutant top-k sets. ``pre``: every feature whose pre-activation moved is
    tried exactly (set it, re-apply TopK, compare with ``z_wt``).
    """
    wt, mut = view.wt, view.mut
    if view.space == "latent":
        return torch.nonzero((mut.z != wt.z).any(0)).flatten()
    candidates = torch.nonzero((mut.pre != wt.pre).any(0)).flatten()
    keep = []
    for start in range(0, len(candidates), chunk):
        cand = candidates[start:start + chunk]
        z = view.latents(single_feature_patches(wt.pre, mut.pre, cand))
        keep.append(cand[(z != wt.z).flatten(1).any(1)])
    return torch.cat(keep) if keep else candidates


def single_feature_patches(base: Tensor, target: Tensor, features: Tensor) -> Tensor:
    """Rows (F, S, d_sae): `base` with feature ``features[r]`` set to its `target` value at every site."""
    rows = base.expand(len(features), *base.shape).clone()
    index = torch.arange(len(features), device=base.device)
    rows[index, :, features] = target[:, features].T
    return rows


def feature_shifts(base: Tensor, features: Tensor, amounts: Tensor) -> Tensor:
    """Rows (F, S, d_sae): `base` with feature ``features[r]`` moved by ``amounts[r]`` (S,) at each site."""
    rows = base.expand(len(features), *base.shape).clone()
    index = torch.arange(len(features), device=base.device)
    rows[index, :, features] = base[:, features].T + amounts
    return rows


def mutant_rng(seed: int, protein: str, layer: int, mutant: str) -> np.random.Generator:
    """A generator fixed by the run's seed and the (protein, layer, mutant) it serves."""
    return np.random.default_rng([seed, layer, zlib.crc32(protein.encode()), zlib.crc32(mutant.encode())])


def plan_patches(view: MutantView, changed: Tensor, settings: PatchSettings,
                 rng: np.random.Generator) -> dict[str, Tensor]:
    """The features each control patches: {control: feature indices}."""
    wt, mut = view.wt, view.mut
    delta_pre = (mut.pre - wt.pre).abs().sum(0)
    if settings.features == "changed":
        real = changed
    else:  # the seed's top-n by |Δpre|
        real = torch.argsort(delta_pre, descending=True, stable=True)[: settings.n].sort().values
    active = torch.nonzero(((wt.z > 0) | (mut.z > 0)).any(0)).flatten()
    stable = active[torch.argsort(delta_pre[active], stable=True)][: settings.stable_n].sort().values
    outside = torch.ones(delta_pre.shape[0], dtype=torch.bool, device=delta_pre.device)
    outside[changed] = False
    outside[real] = False
    pool = torch.nonzero(outside).flatten()
    picks = rng.choice(len(pool), size=min(len(real), len(pool)), replace=False) if len(pool) else []
    random = pool[torch.as_tensor(np.asarray(picks, dtype=np.int64), device=pool.device)]
    return {"real": real, "noop": real, "stable": stable, "random": random}


@dataclass(frozen=True)
class Patches:
    """Every patch of one mutant at one layer, controls included: one entry per (feature, control)."""

    mutant: str
    position: str                    # the sites' positions, ':'-joined
    features: np.ndarray             # (F,) int64
    controls: np.ndarray             # (F,) the control of each row (CONTROLS)
    per_site: dict[str, np.ndarray]  # wt_pre, mut_pre, wt_latent, mut_latent, patched_value: (F, S) float64
    baseline: np.ndarray             # (F,) S(m), from the unmodified row run beside each patch
    patched: np.ndarray              # (F,) S'
    effect: np.ndarray               # (F,) S' − S(m); exactly 0.0 for a no-op

    def count(self, control: str) -> int:
        return int((self.controls == control).sum())


def patch_mutant(view: MutantView, settings: PatchSettings, context: None = None) -> Patches:
    """All patches of one mutant at the view's layer, every control, in engine batches."""
    wt, mut = view.wt, view.mut
    changed = changed_features(view)
    plan = plan_patches(view, changed, settings, mutant_rng(settings.seed, view.protein, view.layer,
                                                            view.mutant.name))
    wt_v, mut_v = view.start, view.end
    written = {  # each row's values in the space it writes
        "real": single_feature_patches(wt_v, mut_v, plan["real"]),
        "noop": single_feature_patches(wt_v, wt_v, plan["noop"]),
        "stable": single_feature_patches(wt_v, mut_v, plan["stable"]),
    }
    magnitude = (mut.z - wt.z).abs()[:, plan["real"][: len(plan["random"])]].T  # (R, S): the real patches' sizes
    written["random"] = feature_shifts(wt.z, plan["random"], magnitude)  # a latent, in both spaces
    latents = torch.cat([*(view.latents(written[c]) for c in CONTROLS[:3]), written["random"]])
    features = torch.cat([plan[c] for c in CONTROLS])
    out = view.latent_effects(latents)

    rows_index = torch.arange(len(features))
    patched = torch.cat([written[c] for c in CONTROLS])[rows_index, :, features]
    per_site = {  # (F, S): the patched feature's values at every site
        "wt_pre": wt.pre[:, features].T, "mut_pre": mut.pre[:, features].T,
        "wt_latent": wt.z[:, features].T, "mut_latent": mut.z[:, features].T,
        "patched_value": patched,
    }
    return Patches(
        mutant=view.mutant.name,
        position=":".join(str(s.pos) for s in view.mutant.sites),
        features=features.cpu().numpy().astype(np.int64),
        controls=np.repeat(CONTROLS, [len(plan[c]) for c in CONTROLS]),
        per_site={name: values.detach().cpu().double().numpy() for name, values in per_site.items()},
        baseline=_numbers(out.baseline), patched=_numbers(out.scores), effect=_numbers(out.effects),
    )


def _numbers(values: Tensor) -> np.ndarray:
    return values.detach().cpu().numpy().astype(np.float64)


def _site_column(values: np.ndarray) -> np.ndarray | list[str]:
    """(F, S) per-site values as one column: numbers for one site, ':'-joined for several."""
    if values.shape[1] == 1:
        return values[:, 0]
    return [":".join(repr(float(v)) for v in row) for row in values]


def patches_frame(results: list[Patches], *, layer: int, k: int, d_sae: int, space: str,
                  activations: str) -> pd.DataFrame:
    """The patching table (``PATCH_COLUMNS``): one row per (mutant, feature, control)."""
    frames = [pd.DataFrame({
        "mutant": p.mutant,
        "position": p.position,
        "layer": layer,
        "feature": p.features,
        "control": p.controls,
        **{name: _site_column(values) for name, values in p.per_site.items()},
        "baseline_score": p.baseline, "patched_score": p.patched, "effect": p.effect,
        "k": k,
        "d_sae": d_sae,
        "space": space,
        "activations": activations,
    }, columns=PATCH_COLUMNS) for p in results]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PATCH_COLUMNS)


def write_patches(results: list[Patches], outputs: Mapping[str, Path], settings: PatchSettings,
                  meta: LayerMeta) -> None:
    """Rule patch_features's output: the patching table."""
    table = patches_frame(results, layer=meta.layer, k=meta.k, d_sae=meta.d_sae, space=settings.space,
                          activations=meta.activations)
    log.info("%s L%d: %d mutants, %d rows (space %s, features %s)", meta.protein, meta.layer, len(results),
             len(table), settings.space, settings.features)
    write_csv(table, outputs["table"])


def summary(p: Patches) -> str:
    real = p.effect[p.controls == "real"]
    return (f"{len(real)} real patches ({', '.join(f'{c} {p.count(c)}' for c in CONTROLS[1:])}), "
            f"max |effect| {float(np.abs(real).max()) if len(real) else 0.0:.4g}")


PATCHING = Analysis(rule="patch_features", settings=PatchSettings, run=patch_mutant, write=write_patches,
                    summary=summary)


def patch_protein(splice: Splice, mutants: list[Mutant], settings: PatchSettings,
                  work: WorkFolder | None = None) -> pd.DataFrame:
    """The patching table of every mutant of one protein at the splice's layer."""
    results = analyse(PATCHING, splice, mutants, settings, work=work)
    return patches_frame(results, layer=splice.layer, k=splice.sae.k, d_sae=splice.sae.info.d_sae,
                         space=settings.space, activations=splice.lm.activations)
