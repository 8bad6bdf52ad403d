"""Activation patching of SAE features at the mutated site, with controls.

METHOD.md "Activation patching": for a mutant and a layer, each feature j whose
patch changes the latent vector is set to its mutant value (all other features
and the error at WT values) and ``effect_j = S' − S(m)``. Controls run beside
the real patches, in the same engine batches:

* ``noop``   — the same features set to their WT values: exactly 0.0;
* ``stable`` — as many features with the smallest ``|pre_mut − pre_wt|``, set to
  their mutant values (the seed's control);
* ``random`` — for each real patch, a feature outside the patched and changed
  sets (seeded RNG), moved by the same magnitude ``|z_mut_j − z_wt_j|`` (in
  ``pre`` space its pre-activation moves by ``|pre_mut_j − pre_wt_j|``).

In ``latent`` space a patch writes ``z`` directly; in ``pre`` space it writes
``pre`` and TopK is applied again (METHOD.md "Intervention space").
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from esmsae.columns import CONTROLS, PATCH_COLUMNS
from esmsae.engine import SiteCode, Splice
from esmsae.mutations import Mutant
from esmsae.resume import WorkFolder, run_items
from esmsae.settings import PatchSettings

log = logging.getLogger(__name__)




def values(code: SiteCode, space: str) -> Tensor:
    """The code's values in the intervention space: ``z`` (latent) or ``pre``."""
    return code.z if space == "latent" else code.pre


def changed_features(splice: Splice, wt: SiteCode, mut: SiteCode, space: str, chunk: int = 256) -> Tensor:
    """Features whose patch to the mutant value changes the latent vector, ascending.

    ``latent``: ``z_mut_j ≠ z_wt_j`` at some site — always inside the union of the
    WT and mutant top-k sets. ``pre``: every feature whose pre-activation moved is
    tried exactly (set it, re-apply TopK, compare with ``z_wt``).
    """
    if space == "latent":
        return torch.nonzero((mut.z != wt.z).any(0)).flatten()
    candidates = torch.nonzero((mut.pre != wt.pre).any(0)).flatten()
    keep = []
    for start in range(0, len(candidates), chunk):
        cand = candidates[start:start + chunk]
        z = splice.latents(single_feature_patches(wt.pre, mut.pre, cand), "pre")
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


def plan_patches(wt: SiteCode, mut: SiteCode, changed: Tensor, settings: PatchSettings,
                 rng: np.random.Generator) -> dict[str, Tensor]:
    """The features each control patches: {control: feature indices}."""
    delta_pre = (mut.pre - wt.pre).abs().sum(0)
    if settings.features == "changed":
        real = changed
    else:  # the seed's top-n by |Δpre|
        real = torch.argsort(delta_pre, descending=True, stable=True)[: settings.n].sort().values
    outside = torch.ones(delta_pre.shape[0], dtype=torch.bool, device=delta_pre.device)
    outside[changed] = False
    outside[real] = False
    pool = torch.nonzero(outside).flatten()
    by_stability = pool[torch.argsort(delta_pre[pool], stable=True)]
    stable = by_stability[: len(real)].sort().values
    picks = rng.choice(len(pool), size=min(len(real), len(pool)), replace=False) if len(pool) else []
    random = pool[torch.as_tensor(np.asarray(picks, dtype=np.int64), device=pool.device)]
    return {"real": real, "noop": real, "stable": stable, "random": random}


def patch_mutant(splice: Splice, mutant: Mutant, h_sites: Tensor, settings: PatchSettings, *,
                 protein: str) -> pd.DataFrame:
    """All patches of one mutant at the splice's layer, every control, in engine batches."""
    space = settings.space
    wt = splice.wt_code([s.pos for s in mutant.sites])
    mut = splice.mutant_code(h_sites, wt)
    changed = changed_features(splice, wt, mut, space)
    plan = plan_patches(wt, mut, changed, settings, mutant_rng(settings.seed, protein, splice.layer, mutant.name))

    wt_v, mut_v = values(wt, space), values(mut, space)
    rows = {
        "real": single_feature_patches(wt_v, mut_v, plan["real"]),
        "noop": single_feature_patches(wt_v, wt_v, plan["noop"]),
        "stable": single_feature_patches(wt_v, mut_v, plan["stable"]),
    }
    magnitude = (mut_v - wt_v).abs()[:, plan["real"][: len(plan["random"])]].T  # (R, S)
    rows["random"] = feature_shifts(wt_v, plan["random"], magnitude)
    features = torch.cat([plan[c] for c in CONTROLS])
    batch = torch.cat([rows[c] for c in CONTROLS])
    out = splice.effects(wt, splice.latents(batch, space), splice.score_spec(mutant))

    rows_index = torch.arange(len(features))
    per_site = {  # (F, S): the patched feature's values at every site
        "wt_pre": wt.pre[:, features].T, "mut_pre": mut.pre[:, features].T,
        "wt_latent": wt.z[:, features].T, "mut_latent": mut.z[:, features].T,
        "patched_value": batch[rows_index, :, features],
    }
    scores = {"baseline_score": out.baseline, "patched_score": out.scores, "effect": out.effects}
    frame = pd.DataFrame({
        "mutant": mutant.name,
        "position": ":".join(str(s.pos) for s in mutant.sites),
        "layer": splice.layer,
        "feature": features.cpu().numpy().astype(np.int64),
        "control": np.repeat(CONTROLS, [len(plan[c]) for c in CONTROLS]),
        **{name: _site_column(values) for name, values in per_site.items()},
        **{name: values.detach().cpu().numpy().astype(np.float64) for name, values in scores.items()},
        "k": splice.sae.k,
        "space": space,
    }, columns=PATCH_COLUMNS)
    return frame


def _site_column(values: Tensor) -> np.ndarray | list[str]:
    """(F, S) per-site values as one column: numbers for one site, ':'-joined for several."""
    values = values.detach().cpu().double().numpy()
    if values.shape[1] == 1:
        return values[:, 0]
    return [":".join(repr(float(v)) for v in row) for row in values]


def patch_protein(splice: Splice, mutants: list[Mutant], settings: PatchSettings, *, protein: str,
                  work: WorkFolder | None = None) -> pd.DataFrame:
    """Patching rows for every mutant of one protein at the splice's layer.

    The mutants' own layer-ℓ states come from one batched forward (always of all
    mutants, so a resumed job computes exactly what an uninterrupted one would);
    each mutant's patches and controls then go through the engine together, and
    its rows are kept in `work` as soon as they are done.
    """
    if not mutants:
        return pd.DataFrame(columns=PATCH_COLUMNS)
    with torch.no_grad():
        h = splice.hidden([m.apply(splice.wt_seq) for m in mutants])

    def one(index: int) -> pd.DataFrame:
        mutant = mutants[index]
        frame = patch_mutant(splice, mutant, h[index, [s.pos for s in mutant.sites]], settings, protein=protein)
        counts = frame["control"].value_counts().to_dict()
        log.info("%s L%d %s: %d real patches (%s), max |effect| %.4g", protein, splice.layer, mutant.name,
                 counts.get("real", 0), ", ".join(f"{c} {counts.get(c, 0)}" for c in CONTROLS[1:]),
                 frame.loc[frame["control"] == "real", "effect"].abs().max() if counts.get("real") else 0.0)
        return frame

    frames = run_items([m.name for m in mutants], one, work, desc=f"patching {protein} L{splice.layer}")
    return pd.concat(frames, ignore_index=True)
