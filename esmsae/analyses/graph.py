"""Cross-layer feature graphs: which upstream features move which downstream ones, and what flows through.

METHOD.md "Cross-layer feature graph", for a mutant and a layer pair ℓ1 < ℓ2 (consecutive layers of
``graph.layers``). Upstream nodes are the changed features at ℓ1, downstream nodes those at ℓ2.
Through the engine's two-SAE splice (:class:`esmsae.model.pair.LayerPair`), exactly:

1. every upstream feature ``a`` patched alone to its mutant value: its effect ``effect_a`` (the
   one-layer patch effect) and every edge weight ``w(a→b) = z_b^a − z_b^wt`` (summed over sites);
2. candidate edges (``a`` upstream, ``b`` downstream, ``w ≠ 0``) ranked by AtP's linear estimate of
   the mediated effect, ``Σ_sites w_s(a→b) · ∂S/∂z_b,s`` at the WT (one backward pass; per site, as
   AtP's ``(z_mut − z_wt) · ∂S/∂z`` is, so a multi-site mutant has no cross-site terms); the top ``max_edges``
   measured exactly, ``M(a→b) = effect_a − effect_a|b`` with ``b`` held at its WT latent at ℓ2, and
   ``check_edges`` more drawn at random from the rest (seeded) to see what the cut missed;
3. for each upstream feature with measured edges, its mediated share
   ``(effect_a − effect_a|B) / effect_a`` with ``B`` its top ``hold`` downstream features by ``|M|``
   held all at once (mediation is not additive), beside its null: as many of ``a``'s linked downstream
   features (``w ≠ 0``) drawn at random and held the same way. Holding any downstream feature ``a``
   that ``a`` moves may remove some of its effect; the top ones carry it only where they beat that.

Downstream nodes get their own one-layer patch effect at ℓ2. All rows go through the engine's
batching policy.
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

from esmsae.analyses.api import Analysis, LayerMeta
from esmsae.analyses.patching import changed_features, single_feature_patches
from esmsae.config.settings import PairSettings
from esmsae.inputs.mutations import Mutant
from esmsae.model.pair import LayerPair
from esmsae.model.sae import TopKSAE, load_sae
from esmsae.model.splice import Splice
from esmsae.model.view import MutantView
from esmsae.pipeline.columns import TABLES
from esmsae.pipeline.io import write_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    """One mutant's graph between two layers."""

    mutant: str
    layer_up: int
    layer_down: int
    nodes: pd.DataFrame   # layer, feature, effect (one-layer patch effect at its layer)
    edges: pd.DataFrame   # up, down, w, linear, mediated, held_effect, chosen ("atp" or "check")
    shares: pd.DataFrame  # up, effect, held, held_effect, mediated_share, and the same for a random hold
    n_candidates: int
    d_sae_down: int       # the downstream SAE's width


class PairContext:
    """What a graph job shares across mutants: the ℓ2 SAE, and per engine its two-SAE splice and ℓ2 splice."""

    def __init__(self, sae2: TopKSAE, settings: PairSettings):
        self.sae2, self.settings = sae2, settings
        self._built: dict[int, tuple[LayerPair, Splice]] = {}

    def for_engine(self, upper: Splice) -> tuple[LayerPair, Splice]:
        if id(upper) not in self._built:
            lower = Splice(upper.lm, self.sae2, upper.wt_seq, self.settings.layer2, upper.batch_size,
                           protein=upper.protein, window=upper.window)
            self._built[id(upper)] = (LayerPair(upper, self.sae2, self.settings.layer2), lower)
        return self._built[id(upper)]


def read_context(inputs: Mapping[str, Path], mutants: list[Mutant], settings: PairSettings) -> PairContext:
    return PairContext(load_sae(inputs["sae2"], settings.k2, layer=settings.layer2), settings)


def mutant_rng(seed: int, protein: str, layer: int, mutant: str) -> np.random.Generator:
    return np.random.default_rng([seed, layer, zlib.crc32(protein.encode()), zlib.crc32(mutant.encode())])


def link(view: MutantView, settings: PairSettings, context: PairContext) -> Link:
    """The graph of one mutant between the view's layer and ``settings.layer2`` (see the module docstring)."""
    pair, lower = context.for_engine(view.engine)
    up = changed_features(view)
    with torch.no_grad():
        states2 = view.engine.lm.between(view.hidden.unsqueeze(0), view.layer, settings.layer2)[0]
    view2 = lower.view(view.mutant, states2, view.space)
    down = changed_features(view2)
    d_sae2 = pair.sae2.info.d_sae
    device = view.start.device
    patches = single_feature_patches(view.start, view.end, up)

    def hold_mask(features_per_row: list[list[int]]) -> torch.Tensor:
        mask = torch.zeros(len(features_per_row), d_sae2, dtype=torch.bool, device=device)
        for row, features in enumerate(features_per_row):
            mask[row, features] = True
        return mask

    # 1. every upstream feature alone: its effect and its edge weights at ℓ2
    alone, w = pair.links(view, patches, hold_mask([[]] * len(up)))
    effect_up = alone.effects.double().cpu().numpy()
    weights = w.sum(1).double().cpu().numpy()  # (A, d_sae2), summed over sites
    nodes_down = view2.effects(single_feature_patches(view2.start, view2.end, down)).effects.double().cpu().numpy()

    # 2. candidate edges ranked by AtP's estimate, the top ones (and a random check) measured exactly
    def gradient(score):
        v = view2.start.unsqueeze(0).clone().requires_grad_(True)
        return torch.autograd.grad(score(v).sum(), v)[0][0]

    per_site = w.double().cpu().numpy()  # (A, S, d_sae2)
    slope = view2.differentiate(gradient).double().cpu().numpy() if len(down) else np.zeros(per_site.shape[1:])
    up_list, down_list = up.cpu().tolist(), down.cpu().tolist()
    candidates = [(i, b) for i in range(len(up_list)) for b in down_list if weights[i, b] != 0]
    linear = np.array([per_site[i, :, b] @ slope[:, b] for i, b in candidates])  # Σ_s w_s(a→b) ∂S/∂z_b,s
    order = np.argsort(-np.abs(linear), kind="stable")
    chosen = order[: settings.max_edges].tolist()
    rest = order[settings.max_edges:]
    rng = mutant_rng(settings.seed, view.protein, view.layer, view.mutant.name)
    check = sorted(rng.choice(rest, size=min(settings.check_edges, len(rest)), replace=False).tolist()) \
        if len(rest) else []
    measured = chosen + check
    rows = [candidates[c] for c in measured]
    held, _ = pair.links(view, patches[[i for i, _ in rows]], hold_mask([[b] for _, b in rows])) \
        if rows else (None, None)
    held_effect = held.effects.double().cpu().numpy() if rows else np.zeros(0)
    edges = pd.DataFrame({
        "up": [up_list[i] for i, _ in rows], "down": [b for _, b in rows],
        "w": [weights[i, b] for i, b in rows], "linear": linear[measured] if rows else [],
        "mediated": [effect_up[i] - h for (i, _), h in zip(rows, held_effect, strict=True)],
        "held_effect": held_effect, "chosen": ["atp"] * len(chosen) + ["check"] * len(check),
    })

    # 3. each upstream feature's mediated share through its top `hold` downstream features, beside a
    #    null: as many of its linked downstream features (w ≠ 0) drawn at random, held the same way
    kept = edges[edges["chosen"] == "atp"]
    groups = [(a, part.reindex(part["mediated"].abs().sort_values(ascending=False, kind="mergesort").index)
               ["down"].head(settings.hold).tolist()) for a, part in kept.groupby("up", sort=True)]
    index = {a: i for i, a in enumerate(up_list)}
    linked = {a: [b for i, b in candidates if up_list[i] == a] for a, _ in groups}
    nulls = [sorted(rng.choice(linked[a], size=len(bs), replace=False).tolist()) for a, bs in groups]
    shares = pd.DataFrame(columns=["up", "effect", "held", "held_effect", "mediated_share", "null_held",
                                   "null_held_effect", "null_share"])
    if groups:
        rows_up = [index[a] for a, _ in groups] * 2
        together, _ = pair.links(view, patches[rows_up], hold_mask([bs for _, bs in groups] + nulls))
        effect_held = together.effects.double().cpu().numpy()
        effect_held, effect_null = effect_held[: len(groups)], effect_held[len(groups):]
        effect_a = np.array([effect_up[index[a]] for a, _ in groups])

        def share(held_effect: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(effect_a != 0, (effect_a - held_effect) / effect_a, np.nan)

        shares = pd.DataFrame({
            "up": [a for a, _ in groups], "effect": effect_a,
            "held": [";".join(map(str, bs)) for _, bs in groups], "held_effect": effect_held,
            "mediated_share": share(effect_held), "null_held": [";".join(map(str, bs)) for bs in nulls],
            "null_held_effect": effect_null, "null_share": share(effect_null),
        })
    nodes = pd.DataFrame({"layer": [view.layer] * len(up_list) + [settings.layer2] * len(down_list),
                          "feature": up_list + down_list, "effect": np.concatenate([effect_up, nodes_down])})
    return Link(mutant=view.mutant.name, layer_up=view.layer, layer_down=settings.layer2, nodes=nodes, edges=edges,
                shares=shares, n_candidates=len(candidates), d_sae_down=d_sae2)


def summary(link: Link) -> str:
    return (f"{len(link.nodes)} nodes, {link.n_candidates} candidate edges, "
            f"{int((link.edges['chosen'] == 'atp').sum())} measured (+{int((link.edges['chosen'] == 'check').sum())} "
            "checks)")


def link_tables(results: list[Link], meta: LayerMeta, settings: PairSettings) -> dict[str, pd.DataFrame]:
    """The job's three tables: nodes, measured edges, mediated shares (one row each per mutant's item)."""
    common = {"layer_up": meta.layer, "layer_down": settings.layer2, "k": meta.k, "d_sae": meta.d_sae,
              "k_down": settings.k2, "d_sae_down": results[0].d_sae_down if results else None,
              "space": settings.space, "activations": meta.activations}

    def frame(kind: str, attribute: str) -> pd.DataFrame:
        parts = [getattr(r, attribute).assign(mutant=r.mutant, **common) for r in results]
        return pd.concat(parts, ignore_index=True).reindex(columns=TABLES[kind]) if parts else \
            pd.DataFrame(columns=TABLES[kind])

    edges = frame("graph_edges", "edges")
    edges["n_candidates"] = edges["mutant"].map({r.mutant: r.n_candidates for r in results})
    return {"nodes": frame("graph_nodes", "nodes"), "edges": edges.reindex(columns=TABLES["graph_edges"]),
            "shares": frame("graph_shares", "shares")}


def write_links(results: list[Link], outputs: Mapping[str, Path], settings: PairSettings, meta: LayerMeta) -> None:
    """Rule link_layers's outputs: the nodes, edges and mediated shares of every mutant at one layer pair."""
    for kind, table in link_tables(results, meta, settings).items():
        write_csv(table, outputs[kind])


GRAPH = Analysis(rule="link_layers", settings=PairSettings, run=link, write=write_links, summary=summary,
                 context=read_context)
