"""Cross-layer feature graphs: the two-SAE splice against fair-esm, and the graph's bookkeeping in closed form."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.graph import Link, PairContext, link, read_context, summary
from esmsae.analyses.graph import mutant_rng as graph_rng
from esmsae.analyses.patching import changed_features, single_feature_patches
from esmsae.analyses.scoring import wt_log_probs, wt_marginal
from esmsae.config.settings import PairSettings
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.pair import LayerPair
from esmsae.model.sae import random_sae
from esmsae.model.splice import Effects, Splice
from esmsae.tables.graph import (
    aggregate_edges,
    edge_ranking_agreement,
    graphml,
    mediation_table,
    mutant_graph,
    write_json,
)
from esmsae.tables.statistics import wilcoxon_p

from .conftest import LAYERS, WT, splice_every_layer
from .reference import hooked_logits, score_from_logits

SEQ = WT["PR40A_HUMAN"]
PAIRS = [(a, b) for a in LAYERS for b in LAYERS if a < b]
MUTANT = parse_mutant("K7P", SEQ)
DOUBLE = parse_mutant("W4A:N38Y", SEQ)


@pytest.fixture(scope="module")
def splices(lm, saes):
    return splice_every_layer(lm, saes, SEQ)


def full_view(splice, mutant):
    return splice.view(mutant, splice.hidden([mutant.apply(SEQ)])[0], "latent")


def settings(layer2: int, **changes) -> PairSettings:
    values = dict(space="latent", max_edges=12, check_edges=6, hold=3, seed=0, layer2=layer2, k2=8)
    return PairSettings(**(values | changes))


def hooked_two_layers(lm, layer1, replace1, layer2, edit2):
    """fair-esm's forward with h_ℓ1 replaced at positions (`replace1`) and h_ℓ2 edited by `edit2(h)`."""
    model = lm.model

    def module(layer):
        return model.layers[layer - 1] if layer < model.num_layers else model.emb_layer_norm_after

    def first(_m, _i, output):
        x = (output[0] if isinstance(output, tuple) else output).clone()
        for pos, vec in replace1.items():
            x[pos, 0] = vec
        return (x, *output[1:]) if isinstance(output, tuple) else x

    def second(_m, _i, output):
        x = (output[0] if isinstance(output, tuple) else output).clone()
        x = edit2(x)
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handles = [module(layer1).register_forward_hook(first), module(layer2).register_forward_hook(second)]
    try:
        with torch.no_grad():
            return model(lm.tokenize([SEQ]))["logits"][0]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("layer1,layer2", PAIRS)
def test_the_two_sae_splice_is_the_model_when_nothing_changes(lm, saes, splices, layer1, layer2):
    pair = LayerPair(splices[layer1], saes[layer2], layer2)
    with torch.no_grad():
        logits = lm.head(lm.between(splices[layer1].h, layer1, layer2), layer2)
        assert torch.equal(logits, lm.logits(splices[layer1].tokens))  # bit for bit
    view = full_view(splices[layer1], MUTANT)
    effects, w = pair.links(view, view.start.unsqueeze(0), torch.zeros(1, saes[layer2].info.d_sae, dtype=torch.bool))
    assert float(effects.effects[0]) == 0.0 and bool((w == 0).all())
    assert float(effects.baseline[0]) == wt_marginal(lm, wt_log_probs(lm, SEQ), [MUTANT])[0]


@pytest.mark.parametrize("layer1,layer2", PAIRS)
def test_holding_nothing_is_the_one_layer_patch_exactly(saes, splices, layer1, layer2):
    pair = LayerPair(splices[layer1], saes[layer2], layer2)
    for mutant in (MUTANT, DOUBLE):
        view = full_view(splices[layer1], mutant)
        up = changed_features(view)
        patches = single_feature_patches(view.start, view.end, up)
        two, _ = pair.links(view, patches, torch.zeros(len(up), saes[layer2].info.d_sae, dtype=torch.bool))
        one = view.effects(patches)
        assert torch.equal(two.effects, one.effects)


@pytest.mark.parametrize("layer1,layer2", PAIRS)
def test_edges_and_held_effects_equal_hooked_fair_esm(lm, saes, splices, layer1, layer2):
    """w(a→b): encode a hooked forward's h_ℓ2 with the ℓ2 SAE; effect_a|b: a hooked forward with both edits."""
    pair = LayerPair(splices[layer1], saes[layer2], layer2)
    view = full_view(splices[layer1], MUTANT)
    site = MUTANT.sites[0].pos
    sae1, sae2 = saes[layer1], saes[layer2]
    up = changed_features(view)[:3]
    z2_wt = pair.code2([site]).z[0]
    base = score_from_logits(hooked_logits(lm, SEQ, layer1, {}), lm, MUTANT)
    for a in up.tolist():
        z = view.wt.z[0].clone()
        z[a] = view.mut.z[0, a]
        vec1 = sae1.decode(z, view.wt.mu[0], view.wt.sigma[0]) + view.wt.error[0]
        captured = {}

        def capture(h, captured=captured):
            captured["h2"] = h[site, 0].clone()
            return h

        hooked_two_layers(lm, layer1, {site: vec1}, layer2, capture)
        _, z2_a, _, sigma_a = sae2.encode(captured["h2"])
        w_ref = z2_a - z2_wt
        b = int(torch.argmax(w_ref.abs()))
        effects, w = pair.links(view, single_feature_patches(view.start, view.end, torch.tensor([a, a])),
                                torch.stack([torch.zeros(sae2.info.d_sae, dtype=torch.bool),
                                             torch.nn.functional.one_hot(torch.tensor(b), sae2.info.d_sae).bool()]))
        assert (w[0, 0] - w_ref).abs().max() <= 1e-5

        def hold(h, b=b, w_ref=w_ref, sigma_a=sigma_a):
            h[site, 0] = h[site, 0] - w_ref[b] * sae2.w_dec[b] * sigma_a[0]
            return h

        held = hooked_two_layers(lm, layer1, {site: vec1}, layer2, hold)
        assert abs(float(effects.effects[1]) - (score_from_logits(held, lm, MUTANT) - base)) <= 1e-5


def fair_esm_states(lm, seq, layer):
    """fair-esm's own ``representations[layer]`` of `seq`, (T, d): no engine code."""
    with torch.no_grad():
        return lm.model(lm.tokenize([seq]), repr_layers=[layer])["representations"][layer][0]


def sae_reading(lm, sae, layer, mutant):
    """An SAE's reading of the WT and the mutant at the mutant's sites, from fair-esm's own forwards (no engine
    code): z_wt, z_mut (S, d_sae), the WT statistics and error, and the changed features (z differs at a site)."""
    positions = [s.pos for s in mutant.sites]
    h_wt = fair_esm_states(lm, SEQ, layer)[positions]
    _, z_wt, mu, sigma = sae.encode(h_wt)
    _, z_mut, _, _ = sae.encode(fair_esm_states(lm, mutant.apply(SEQ), layer)[positions])
    return SimpleNamespace(positions=positions, z_wt=z_wt, z_mut=z_mut, mu=mu, sigma=sigma,
                           error=h_wt - sae.decode(z_wt, mu, sigma),
                           changed=torch.nonzero((z_mut != z_wt).any(0)).flatten().tolist())


def hooked_patch_effect(lm, layer, sae, reading, mutant, feature, base):
    """One feature patched to its mutant value at every site (others and the error at WT), by a hooked forward."""
    z = reading.z_wt.clone()
    z[:, feature] = reading.z_mut[:, feature]
    vec = sae.decode(z, reading.mu, reading.sigma) + reading.error
    return score_from_logits(hooked_logits(lm, SEQ, layer, dict(zip(reading.positions, vec, strict=True))),
                             lm, mutant) - base


def hooked_gradient(lm, layer, sae, reading, mutant):
    """∂S/∂z at the WT latents at `layer`, (S, d_sae): fair-esm's forward with h_ℓ at the sites set to
    dec(z; μ, σ) + e (the WT's own vector), differentiated by autograd."""
    model = lm.model
    module = model.layers[layer - 1] if layer < model.num_layers else model.emb_layer_norm_after
    z = reading.z_wt.clone().requires_grad_(True)

    def hook(_m, _i, output):
        x = (output[0] if isinstance(output, tuple) else output).clone()
        for s, pos in enumerate(reading.positions):
            x[pos, 0] = sae.decode(z[s], reading.mu[s], reading.sigma[s]) + reading.error[s]
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logp = torch.log_softmax(model(lm.tokenize([SEQ]))["logits"][0], -1)
            score = sum(logp[s.pos, lm.token_index(s.mut)] - logp[s.pos, lm.token_index(s.wt)] for s in mutant.sites)
            return torch.autograd.grad(score, z)[0]
    finally:
        handle.remove()


def hooked_pair(lm, layer1, sae1, up, a, layer2, sae2, down, mutant, hold=()):
    """fair-esm's forward with upstream feature `a` patched at ℓ1 (its mutant value at every site) and, at ℓ2,
    the features `hold` set back to their WT latents (h'' = h^a − w_b · w_dec_b · σ^a at each site):
    (w = z^a − z^wt at ℓ2 per site (S, d_sae2), the score)."""
    z = up.z_wt.clone()
    z[:, a] = up.z_mut[:, a]
    vec1 = sae1.decode(z, up.mu, up.sigma) + up.error
    seen = {}

    def edit(h):
        _, z2, _, sigma2 = sae2.encode(h[down.positions, 0])
        seen["w"] = w = z2 - down.z_wt
        for s, pos in enumerate(down.positions):
            for b in hold:
                h[pos, 0] = h[pos, 0] - w[s, b] * sae2.w_dec[b] * sigma2[s, 0]
        return h

    logits = hooked_two_layers(lm, layer1, dict(zip(up.positions, vec1, strict=True)), layer2, edit)
    return seen["w"], score_from_logits(logits, lm, mutant)


@pytest.mark.parametrize("mutant,layer1,layer2", [(DOUBLE, 1, 3), (MUTANT, 2, 4)])
def test_a_real_graph_equals_hooked_fair_esm_with_a_lower_sae_of_its_own(lm, saes, splices, mutant, layer1, layer2):
    """link() through the context's own two-SAE splice and ℓ2 splice, with an ℓ2 SAE of another width, k and
    weights than the ℓ1 one (so building anything at ℓ2 with the ℓ1 SAE fails), against fair-esm's forward
    hooked by hand: both layers' nodes and effects, every measured edge's w (summed over sites), held effect,
    M and AtP estimate Σ_s w_s ∂S/∂z_b,s, and every share's joint hold."""
    sae1, sae2 = saes[layer1], random_sae(lm.embed_dim, 48, 6, seed=11, layer=layer2)
    config = settings(layer2, k2=6, max_edges=6, check_edges=3)
    result = link(full_view(splices[layer1], mutant), config, PairContext(sae2, config))
    up, down = sae_reading(lm, sae1, layer1, mutant), sae_reading(lm, sae2, layer2, mutant)
    base = score_from_logits(hooked_logits(lm, SEQ, layer1, {}), lm, mutant)
    assert (result.mutant, result.layer_up, result.layer_down, result.d_sae_down) == (mutant.name, layer1, layer2, 48)

    effect_up = {a: hooked_patch_effect(lm, layer1, sae1, up, mutant, a, base) for a in up.changed}
    effect_down = [hooked_patch_effect(lm, layer2, sae2, down, mutant, b, base) for b in down.changed]
    assert result.nodes[["layer", "feature"]].values.tolist() == \
        [[layer1, a] for a in up.changed] + [[layer2, b] for b in down.changed]
    assert result.nodes["effect"].tolist() == pytest.approx(list(effect_up.values()) + effect_down, abs=1e-5)

    def joint(a, hold=()):
        w, score = hooked_pair(lm, layer1, sae1, up, a, layer2, sae2, down, mutant, hold)
        return w, score - base

    g = hooked_gradient(lm, layer2, sae2, down, mutant)
    w = {a: joint(a)[0] for a in up.changed}
    linear = {(a, b): float((w[a][:, b] * g[:, b]).sum()) for a in up.changed for b in down.changed
              if float(w[a][:, b].sum()) != 0}
    assert result.n_candidates == len(linear)
    top = sorted(linear, key=lambda edge: -abs(linear[edge]))[:6]
    assert [(r.up, r.down) for r in result.edges.itertuples() if r.chosen == "atp"] == top
    assert (result.edges["chosen"] == "check").sum() == min(3, len(linear) - 6)
    for r in result.edges.itertuples():
        assert r.w == pytest.approx(float(w[r.up][:, r.down].sum()), abs=1e-5)  # summed over the sites
        assert r.linear == pytest.approx(linear[r.up, r.down], abs=1e-5)
        held = joint(r.up, [r.down])[1]
        assert r.held_effect == pytest.approx(held, abs=1e-5)
        assert r.mediated == pytest.approx(effect_up[r.up] - held, abs=1e-5)
    assert len(result.shares) == len({r.up for r in result.edges.itertuples() if r.chosen == "atp"})
    for r in result.shares.itertuples():
        assert r.effect == pytest.approx(effect_up[r.up], abs=1e-5)
        held, null = joint(r.up, [int(b) for b in r.held.split(";")])[1], \
            joint(r.up, [int(b) for b in r.null_held.split(";")])[1]  # each set held all at once
        assert r.held_effect == pytest.approx(held, abs=1e-5) and r.null_held_effect == pytest.approx(null, abs=1e-5)


class LinearPair:
    """A stand-in for the two-SAE splice whose effects are known in closed form. Patching upstream `a` moves
    downstream `b` at site s by ``W[s, a, b]``, and a unit of ``z_b`` at site s moves S by ``g[s, b]`` (the real
    ∂S/∂z at the WT at ℓ2, computed by the test itself), so with the set B held at their WT latents
    ``effect_a|B = c_a + Σ_{b ∉ B} T[a, b]``, ``T[a, b] = Σ_s W[s, a, b] g[s, b]``: ``M(a→b) = T[a, b]``,
    ``w(a→b) = Σ_s W[s, a, b]``, and AtP's linear estimate ``Σ_s w_s g_s`` is exact."""

    def __init__(self, W: torch.Tensor, c: list[float], g: torch.Tensor):
        self.W, self.c = W, c
        self.T = (W * g[:, None, :]).sum(0).tolist()
        self.sae2 = SimpleNamespace(info=SimpleNamespace(d_sae=W.shape[2]))

    def effect(self, a: int, held=()) -> float:
        return self.c[a] + sum(t for b, t in enumerate(self.T[a]) if b not in set(held))  # in order, in Python

    def links(self, view, values, hold):
        patched = (values != view.start.unsqueeze(0)).any(1)  # (rows, d1)
        ups = [int(row.nonzero()) for row in patched]  # int() fails unless each row patches exactly one feature
        effects = torch.tensor([self.effect(a, h.nonzero().flatten().tolist()) for a, h in zip(ups, hold, strict=True)],
                               dtype=torch.float64)
        return Effects(scores=effects, baseline=torch.zeros_like(effects), effects=effects), \
            self.W[:, ups].transpose(0, 1)


def linear_graph(lm, saes, splices, mutant, layer1, layer2, seed=0, **changes):
    """The graph link() makes with the closed-form stand-in in place of the two-SAE splice; the ℓ2 splice is the
    context's own, while the expected ℓ2 nodes, effects and slopes come from hooked forwards (never from it).

    W links each (a, b) of the changed sets with probability 1/2, its per-site values of either sign; the first
    upstream feature is linked to exactly two downstream ones (so its null must draw both), and the second has
    an effect of exactly 0 (its shares are NaN)."""
    view = full_view(splices[layer1], mutant)
    config = settings(layer2, **changes)
    context = PairContext(saes[layer2], config)
    up = changed_features(view).tolist()
    down_reading = sae_reading(lm, saes[layer2], layer2, mutant)
    down = down_reading.changed
    g = hooked_gradient(lm, layer2, saes[layer2], down_reading, mutant).double()
    S, d1, d2 = len(mutant.sites), saes[layer1].info.d_sae, saes[layer2].info.d_sae
    assert len(up) >= 3 and len(down) >= 4
    rng = np.random.default_rng(seed)
    W = torch.zeros(S, d1, d2, dtype=torch.float64)
    links = rng.random((len(up), len(down))) < 0.5
    links[0] = False
    links[0, :2] = True
    links[1, 2] = True
    values = torch.tensor(rng.normal(size=(S, len(up), len(down))) * links)
    values[:, 0, :2] *= 50  # the first upstream feature's two edges and one of the second's rank at the top
    values[:, 1, 2] *= 50
    W[:, torch.tensor(up)[:, None], torch.tensor(down)[None, :]] = values
    c = (rng.normal(size=d1) * 0.01).tolist()
    stand_in = LinearPair(W, c, g)
    stand_in.c[up[1]] = -sum(stand_in.T[up[1]])  # effect_a exactly 0 (the same sum, in the same order)
    _, lower = context.for_engine(splices[layer1])  # the context's ℓ2 splice, as link() builds it
    context._built[id(splices[layer1])] = (stand_in, lower)
    base = score_from_logits(hooked_logits(lm, SEQ, layer1, {}), lm, mutant)
    expected = SimpleNamespace(
        up=up, down=down, W=W, pair=stand_in, T=stand_in.T, w=W.sum(0).tolist(),
        effect_down=[hooked_patch_effect(lm, layer2, saes[layer2], down_reading, mutant, b, base) for b in down],
        candidates=[(a, b) for a in up for b in down if float(W[:, a, b].sum()) != 0])
    return link(view, config, context), expected


@pytest.mark.parametrize("mutant,layer1,layer2,changes", [(MUTANT, 1, 2, {}), (DOUBLE, 2, 4, {}),
                                                          (DOUBLE, 1, 3, {"max_edges": 30, "hold": 2})])
def test_mediated_effects_and_shares_in_closed_form(lm, saes, splices, mutant, layer1, layer2, changes):
    result, x = linear_graph(lm, saes, splices, mutant, layer1, layer2, **changes)
    E, C, H = changes.get("max_edges", 12), 6, changes.get("hold", 3)  # kept, checked, held
    T, pair = x.T, x.pair
    # nodes: the upstream features with effect_a = c_a + Σ_b T[a, b], then the ℓ2 SAE's own changed features
    assert result.nodes[["layer", "feature"]].values.tolist() == [[layer1, a] for a in x.up] + \
        [[layer2, b] for b in x.down]
    assert result.nodes["effect"].tolist()[: len(x.up)] == [pair.effect(a) for a in x.up]
    assert result.nodes["effect"].tolist()[len(x.up):] == pytest.approx(x.effect_down, abs=1e-5)
    # candidates: every linked (a, b); the top E by |AtP| = |M| measured, C more drawn from the rest
    assert result.n_candidates == len(x.candidates) > E + C
    atp = sorted(x.candidates, key=lambda e: -abs(T[e[0]][e[1]]))[:E]
    assert result.edges["chosen"].tolist() == ["atp"] * E + ["check"] * C
    assert [(r.up, r.down) for r in result.edges.itertuples()][:E] == atp  # largest |AtP| first
    checks = [(r.up, r.down) for r in result.edges.itertuples()][E:]
    assert len(set(checks)) == C and not set(checks) & set(atp) and set(checks) <= set(x.candidates)
    assert checks == sorted(checks)  # in candidate order
    for r in result.edges.itertuples():
        assert r.w == x.w[r.up][r.down]  # Σ_s W[s, a, b]: per-site values of either sign
        assert r.mediated == pytest.approx(T[r.up][r.down], abs=1e-12)
        assert r.held_effect == pair.effect(r.up, [r.down])
        assert r.linear == pytest.approx(T[r.up][r.down], rel=1e-4, abs=1e-7)  # AtP exact for a linear model
    # shares: every upstream feature with AtP-kept edges, ascending; B = its top H kept edges by |M|
    kept_ups = sorted({a for a, _ in atp})
    assert result.shares["up"].tolist() == kept_ups
    for r in result.shares.itertuples():
        held = [b for a, b in sorted(atp, key=lambda e: -abs(T[e[0]][e[1]])) if a == r.up][:H]
        assert [int(b) for b in r.held.split(";")] == held
        effect = pair.effect(r.up)
        assert r.effect == effect and r.held_effect == pair.effect(r.up, held)
        null = [int(b) for b in r.null_held.split(";")]  # as many linked features, drawn at random, ascending
        linked = [b for a, b in x.candidates if a == r.up]
        assert len(set(null)) == len(null) == len(held) and set(null) <= set(linked) and null == sorted(null)
        assert r.null_held_effect == pair.effect(r.up, null)
        if r.up == x.up[1]:  # effect exactly 0: no share
            assert effect == 0.0 and np.isnan(r.mediated_share) and np.isnan(r.null_share)
            continue
        assert r.mediated_share == pytest.approx(sum(T[r.up][b] for b in held) / effect, rel=1e-9)
        assert r.null_share == pytest.approx(sum(T[r.up][b] for b in null) / effect, rel=1e-9)
    first = result.shares.set_index("up").loc[x.up[0]]
    held, null = ([int(b) for b in first[c].split(";")] for c in ("held", "null_held"))
    assert sorted(held) == null == x.down[:2]  # its only two links: both held, both drawn
    if H < 3:  # some upstream feature has more kept edges than are held
        assert max(len([b for a, b in atp if a == up]) for up in kept_ups) > H
    agreement = edge_ranking_agreement(result.edges.assign(mutant=mutant.name, layer_up=layer1, layer_down=layer2))
    assert agreement["spearman"].iloc[0] == pytest.approx(1.0) and agreement["n_missed"].iloc[0] == 0


def test_check_edges_are_seeded_and_outside_the_kept_ones(lm, saes, splices):
    one, _ = linear_graph(lm, saes, splices, MUTANT, 1, 3, max_edges=5, check_edges=4)
    two, _ = linear_graph(lm, saes, splices, MUTANT, 1, 3, max_edges=5, check_edges=4)
    other, _ = linear_graph(lm, saes, splices, MUTANT, 1, 3, max_edges=5, check_edges=4, seed=9)
    pd.testing.assert_frame_equal(one.edges, two.edges)
    pd.testing.assert_frame_equal(one.shares, two.shares)
    keys = {(r.up, r.down) for r in one.edges.itertuples() if r.chosen == "atp"}
    checks = {(r.up, r.down) for r in one.edges.itertuples() if r.chosen == "check"}
    assert len(keys) == 5 and len(checks) == 4 and not keys & checks
    assert checks != {(r.up, r.down) for r in other.edges.itertuples() if r.chosen == "check"}


def test_the_cut_at_its_bounds(lm, saes, splices):
    """max_edges at or above the candidates: all kept, no checks; check_edges at or above the rest: the whole
    rest, each once; max_edges 0: only checks, and no shares (their columns still there)."""
    everything, x = linear_graph(lm, saes, splices, DOUBLE, 1, 3, max_edges=1000, check_edges=6)
    assert everything.edges["chosen"].tolist() == ["atp"] * len(x.candidates)
    assert sorted(zip(everything.edges["up"], everything.edges["down"], strict=True)) == x.candidates
    exact, _ = linear_graph(lm, saes, splices, DOUBLE, 1, 3, max_edges=len(x.candidates) - 5, check_edges=5)
    rest, _ = linear_graph(lm, saes, splices, DOUBLE, 1, 3, max_edges=len(x.candidates) - 5, check_edges=1000)
    for frame in (exact.edges, rest.edges):
        assert frame["chosen"].tolist() == ["atp"] * (len(x.candidates) - 5) + ["check"] * 5
        assert sorted(zip(frame["up"], frame["down"], strict=True)) == x.candidates  # each candidate once
    none, _ = linear_graph(lm, saes, splices, DOUBLE, 1, 3, max_edges=0, check_edges=3)
    assert none.edges["chosen"].tolist() == ["check"] * 3 and none.shares.empty
    assert list(none.shares.columns) == ["up", "effect", "held", "held_effect", "mediated_share", "null_held",
                                         "null_held_effect", "null_share"]
    assert none.n_candidates == len(x.candidates)


def tie_graph(lm, saes, splices, sae2, W, g, **changes):
    """link() of W4A:N38Y from layer 1 to 3 with the closed-form stand-in given W and g (effects only)."""
    view = full_view(splices[1], DOUBLE)
    config = settings(3, **changes)
    context = PairContext(sae2, config)
    _, lower = context.for_engine(splices[1])
    context._built[id(splices[1])] = (LinearPair(W, [0.0] * W.shape[1], g), lower)
    return link(view, config, context)


def test_tied_atp_estimates_keep_the_candidate_order(lm, saes, splices):
    """Every upstream feature moves one downstream feature, every other one by twice the per-site amounts, so the
    AtP estimates take two values, each tied many times: a stable ranking keeps the larger ones in candidate order
    (ascending upstream feature). More than numpy's insertion-sort cutoff (16), so an unstable sort reorders them."""
    up = changed_features(full_view(splices[1], DOUBLE)).tolist()
    b = sae_reading(lm, saes[3], 3, DOUBLE).changed[0]
    assert len(up) > 16
    W = torch.zeros(2, saes[1].info.d_sae, saes[3].info.d_sae, dtype=torch.float64)
    W[0, up, b], W[1, up, b] = 0.5, -0.25
    W[:, up[1::2], b] *= 2
    result = tie_graph(lm, saes, splices, saes[3], W, torch.ones(2, saes[3].info.d_sae), max_edges=5, check_edges=0)
    assert result.n_candidates == len(up) and len(set(result.edges["linear"])) == 1
    assert [(r.up, r.down) for r in result.edges.itertuples()] == [(a, b) for a in up[1::2][:5]]


def test_tied_mediated_effects_hold_the_first_in_ranking_order(lm, saes, splices):
    """One upstream feature moves every downstream feature of a wider-k ℓ2 SAE, every other one by twice the
    amounts, and each of the others moves S four times as much, so M takes two values, each tied many times: B is the
    first `hold` of the larger in the table's (AtP) order, as a stable sort keeps them."""
    sae2 = random_sae(lm.embed_dim, 96, 24, seed=5, layer=3)
    a = changed_features(full_view(splices[1], DOUBLE)).tolist()[0]
    down = sae_reading(lm, sae2, 3, DOUBLE).changed
    assert len(down) > 16
    W = torch.zeros(2, saes[1].info.d_sae, 96, dtype=torch.float64)
    W[0, a, down], W[1, a, down] = 0.5, -0.25
    W[:, a, down[1::2]] *= 2
    g = torch.ones(2, 96)
    g[:, down[::2]] = 4  # the smaller moves count more: M 1 for them, 0.5 for the others
    result = tie_graph(lm, saes, splices, sae2, W, g, max_edges=1000, check_edges=0, hold=10)
    assert len(result.edges) == len(down) and set(result.edges["mediated"]) == {1.0, 0.5}
    larger = [b for b, m in zip(result.edges["down"], result.edges["mediated"], strict=True) if m == 1.0]
    assert result.shares["held"].tolist() == [";".join(map(str, larger[:10]))]


def test_nothing_measured_gives_edges_and_shares_with_no_rows(lm, saes, splices):
    result, x = linear_graph(lm, saes, splices, MUTANT, 1, 3, max_edges=0, check_edges=0)
    assert result.edges.empty and result.shares.empty and result.n_candidates == len(x.candidates)
    assert list(result.edges.columns) == ["up", "down", "w", "linear", "mediated", "held_effect", "chosen"]
    assert summary(result) == f"{len(x.up) + len(x.down)} nodes, {len(x.candidates)} candidate edges, 0 measured " \
        "(+0 checks)"


def test_no_downstream_change_gives_the_upstream_nodes_and_no_edges(saes, splices, monkeypatch):
    import esmsae.analyses.graph as graph

    full = link(full_view(splices[1], MUTANT), settings(3), PairContext(saes[3], settings(3)))
    real = graph.changed_features
    monkeypatch.setattr(graph, "changed_features", lambda view: real(view) if view.layer == 1 else real(view)[:0])
    none = link(full_view(splices[1], MUTANT), settings(3), PairContext(saes[3], settings(3)))
    pd.testing.assert_frame_equal(none.nodes, full.nodes[full.nodes["layer"] == 1])
    assert none.edges.empty and none.shares.empty and none.n_candidates == 0


def test_the_context_builds_its_pair_and_lower_splice_once_per_engine(lm, saes, tiny_dir):
    config = settings(3, k2=5)
    context = read_context({"sae2": tiny_dir / "sae_l3.safetensors"}, [], config)
    assert context.settings is config and context.sae2.k == 5 and context.sae2.info.layer == 3
    assert torch.equal(context.sae2.w_enc, saes[3].w_enc)  # the ℓ2 file, read with the ℓ2 k
    upper = Splice(lm, saes[1], SEQ, 1, batch_size=3, protein="P")
    pair, lower = context.for_engine(upper)
    again = context.for_engine(upper)
    assert again[0] is pair and again[1] is lower
    assert pair.upper is upper and pair.layer2 == 3 and pair.sae2 is context.sae2
    assert (lower.layer, lower.sae, lower.wt_seq, lower.batch_size, lower.protein) == (3, context.sae2, SEQ, 3, "P")
    other = Splice(lm, saes[1], SEQ, 1)
    assert context.for_engine(other)[0] is not pair and context.for_engine(other)[1].batch_size is None


def test_graph_rngs_are_seeded_by_seed_protein_layer_and_mutant():
    draws = {key: graph_rng(*key).random() for key in [(0, "P", 1, "A1C"), (1, "P", 1, "A1C"), (0, "Q", 1, "A1C"),
                                                        (0, "P", 2, "A1C"), (0, "P", 1, "A1D")]}
    assert len(set(draws.values())) == 5 and graph_rng(0, "P", 1, "A1C").random() == draws[0, "P", 1, "A1C"]


def test_graph_files_and_tables_by_hand():
    nodes = pd.DataFrame({"layer": [2, 2, 4], "feature": [1, 5, 7], "effect": [0.5, -0.2, 0.1],
                          "activations": "fair-esm"})
    edges = pd.DataFrame({"mutant": "A1C", "layer_up": 2, "up": [1, 5, 1], "layer_down": 4, "down": [7, 7, 9],
                          "w": [0.3, -0.1, 0.2], "linear": [0.1, 0.05, 0.0], "mediated": [0.2, -0.4, 0.01],
                          "held_effect": [0.3, 0.2, 0.49], "chosen": ["atp", "atp", "check"],
                          "activations": "fair-esm"})
    one = mutant_graph("P", "A1C", nodes, edges, {(2, 1): "L-identity; promotes L"}, top_edges=1)
    assert (one["protein"], one["mutant"], one["activations"]) == ("P", "A1C", "fair-esm")
    assert [e["M"] for e in one["edges"]] == [-0.4]  # the largest |M| among measured edges; checks never drawn
    assert {n["id"] for n in one["nodes"]} == {"L2_F5", "L4_F7"}
    assert json.loads(json.dumps(one))["nodes"][0]["effect"] == -0.2
    root = ElementTree.fromstring(graphml(mutant_graph("P", "A1C", nodes, edges, {(2, 1): "L & <x>"}, 5)))
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert len(root.findall(".//g:node", ns)) == 3 and len(root.findall(".//g:edge", ns)) == 2
    assert any(d.text == "L & <x>" for d in root.findall(".//g:data", ns))  # labels escaped, read back
    own = {d.get("key"): d.text for d in root.find("g:graph", ns).findall("g:data", ns)}
    assert own == {"protein": "P", "mutant": "A1C", "activations": "fair-esm"}  # the graph's own data
    second = edges.assign(mutant="D2E", mediated=[0.4, -0.2, 0.3])
    table = aggregate_edges(pd.concat([edges, second]), {})
    assert table[["up", "down", "n_mutants"]].values.tolist() == [[1, 7, 2], [5, 7, 2]]
    assert table.loc[0, "mean_mediated"] == pytest.approx(0.3)
    assert table["activations"].tolist() == ["fair-esm", "fair-esm"]
    counted = {"nodes": [], "edges": [{"source": "L2_F1", "target": "L4_F7", "w": 0.5, "M": 0.3, "n_mutants": 2}]}
    edge = ElementTree.fromstring(graphml(counted)).find(".//g:edge", ns)
    assert {d.get("key"): d.text for d in edge} == {"w": "0.5", "M": "0.3", "n_mutants": "2"}  # the aggregate's counts
    shares = pd.DataFrame({"mutant": ["A1C", "A1C", "D2E", "E3F"], "layer_up": 2, "up": [1, 5, 1, 1],
                           "effect": [0.5, -0.2, 1.0, 0.0], "held": "7", "held_effect": [0.3, 0.2, 0.5, 0.1],
                           "mediated_share": [0.4, 2.0, 0.5, np.nan], "null_held": "9",
                           "null_held_effect": [0.5, -0.1, 0.9, 0.0], "null_share": [0.0, 0.5, 0.1, np.nan],
                           "layer_down": 4, "k": 8, "d_sae": 64, "k_down": 4, "d_sae_down": 32, "space": "latent",
                           "activations": "fair-esm"})
    row = mediation_table({"P": shares}, {"P": pd.concat([edges, second])}).iloc[0]
    # per mutant Σ|effect − held| / Σ|effect|: A1C (0.2 + 0.4) / 0.7, D2E 0.5 / 1.0; E3F moves nothing: left out
    assert row["n_mutants"] == 2
    assert row["mediated_fraction_mean"] == pytest.approx((0.6 / 0.7 + 0.5) / 2)
    assert row["mediated_fraction_sem"] == pytest.approx(abs(0.6 / 0.7 - 0.5) / 2)  # sd/√2 of two values
    # the null: A1C (0 + 0.1) / 0.7, D2E 0.1 / 1.0; both mutants above it
    assert row["null_fraction_mean"] == pytest.approx((0.1 / 0.7 + 0.1) / 2)
    assert row["frac_mutants_above_null"] == 1.0
    assert row["median_feature_share"] == pytest.approx(0.5) and row["median_null_share"] == pytest.approx(0.1)
    assert (row["k"], row["d_sae"], row["k_down"], row["d_sae_down"], row["activations"]) == (8, 64, 4, 32, "fair-esm")
    assert row["atp_checked"] == 2 and row["atp_missed"] == 1  # D2E's check (|M| 0.3) beats its kept 0.2
    # both mutants' fractions above their nulls: two positive differences, exact two-sided p = 2 · 1/4
    assert row["wilcoxon_p"] == 0.5


def hand_aggregate(rows):
    from esmsae.pipeline.columns import TABLES

    return pd.DataFrame([{"layer_up": lu, "up": u, "up_label": "", "layer_down": ld, "down": d, "down_label": "",
                          "n_mutants": n, "mean_w": 0.1, "mean_mediated": m, "mean_abs_mediated": abs(m)}
                         for lu, u, ld, d, n, m in rows], columns=TABLES["graph_aggregate"])


# strength = n_mutants × mean |M|: 2:1→4:7 1.0, 2:2→4:7 0.3, 2:1→4:8 1.2, 4:7→6:9 0.8, 4:8→6:9 0.2,
# 4:9→6:1 5.0 (4:9 has no upstream edge, so no path spans the layers through it)
PATH_EDGES = [(2, 1, 4, 7, 2, 0.5), (2, 2, 4, 7, 1, -0.3), (2, 1, 4, 8, 3, 0.4), (4, 7, 6, 9, 2, -0.4),
              (4, 8, 6, 9, 1, 0.2), (4, 9, 6, 1, 5, 1.0)]


def test_strongest_paths_by_hand():
    from esmsae.tables.graph import strongest_paths

    aggregate = hand_aggregate(PATH_EDGES)
    # 1→7→9: min(1.0, 0.8) = 0.8; 2→7→9: min(0.3, 0.8) = 0.3; 1→8→9: min(1.2, 0.2) = 0.2
    expected = [(0.8, [(2, 1), (4, 7), (6, 9)]), (0.3, [(2, 2), (4, 7), (6, 9)]), (0.2, [(2, 1), (4, 8), (6, 9)])]
    for n in (1, 2, 3, 10):
        found = strongest_paths(aggregate, [6, 2, 4], n)
        assert [(round(s, 12), p) for s, p in found] == expected[:n]
    assert strongest_paths(aggregate.iloc[::-1], [2, 4, 6], 3) == strongest_paths(aggregate, [2, 4, 6], 3)
    assert [p for _, p in strongest_paths(aggregate, [4, 6], 1)] == [[(4, 9), (6, 1)]]  # one pair: its top edge
    assert strongest_paths(aggregate, [2], 3) == [] and strongest_paths(aggregate.iloc[:0], [2, 4], 3) == []


def test_graph_figure_draws_the_strongest_paths(tmp_path):
    from esmsae.figures.graph import feature_graph

    aggregate = hand_aggregate(PATH_EDGES).assign(up_label="E-identity; promotes D")
    fig = feature_graph(aggregate, [2, 4, 6], tmp_path / "g.png", tmp_path / "g.pdf", protein="P", paths=2)
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # 1→7, 2→7, 7→9: the two strongest paths' distinct edges
    texts = [t.get_text() for t in ax.texts]
    assert "L2 F1\nE-identity\npromotes D" in texts and not any(t.startswith("L4 F8") for t in texts)
    assert "2 strongest paths from layer 2 to 6" in fig._suptitle.get_text()
    assert (tmp_path / "g.png").stat().st_size > 0 and (tmp_path / "g.pdf").stat().st_size > 0


def test_graph_figure_without_a_spanning_path_draws_each_pair_top_edges(tmp_path):
    from esmsae.figures.graph import feature_graph

    rows = [(2, i, 4, 50 + i % 3, 10 - i, (-1) ** i * 0.1 * (i + 1)) for i in range(10)]
    rows += [(4, 60, 6, 7 + i, 3, 0.1) for i in range(3)]  # 4:60 has no upstream edge: no path spans 2→6
    fig = feature_graph(hand_aggregate(rows), [2, 4, 6], tmp_path / "g.png", tmp_path / "g.pdf", per_pair=4)
    assert len(fig.axes[0].lines) == 4 + 3  # the four 2→4 edges in the most mutants, all three 4→6
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "L2 F3" in texts and "L2 F4" not in texts and "no path spans every layer" in fig._suptitle.get_text()
    empty = feature_graph(hand_aggregate([]), [2, 4], tmp_path / "e.png", tmp_path / "e.pdf")
    assert "no measured edges" in [t.get_text() for t in empty.axes[0].texts]


def test_mediated_fraction_figure_pairs_each_mutant_with_its_null(tmp_path):
    from esmsae.figures.graph import mediated_fraction
    from esmsae.tables.graph import mediated_fractions

    shares = pd.DataFrame({"mutant": ["A1C", "A1C", "D2E"], "layer_up": 2, "layer_down": 4, "up": [1, 5, 1],
                           "effect": [0.5, -0.2, 1.0], "held_effect": [0.3, 0.2, 0.5],
                           "null_held_effect": [0.5, -0.1, 0.9]})
    fractions = mediated_fractions(shares).assign(protein="P")
    assert fractions[["mediated_fraction", "null_fraction"]].values.ravel().tolist() == pytest.approx(
        [0.6 / 0.7, 0.1 / 0.7, 0.5, 0.1])
    fig = mediated_fraction(fractions, tmp_path / "m.png", tmp_path / "m.pdf")
    ax = fig.axes[0]
    joins = [line for line in ax.lines if len(line.get_xdata()) == 2 and np.isclose(np.ptp(line.get_xdata()), 0.3)]
    assert len(joins) == 2  # one line per mutant, null (left) to fraction (right)
    assert sorted(tuple(np.round(line.get_ydata(), 9)) for line in joins) == sorted(
        [(round(0.1 / 0.7, 9), round(0.6 / 0.7, 9)), (0.1, 0.5)])
    empty = mediated_fraction(fractions.iloc[:0], tmp_path / "e.png", tmp_path / "e.pdf")
    assert "no mediated shares" in [t.get_text() for t in empty.axes[0].texts]


def test_a_mutant_graph_by_hand():
    """The top_edges measured edges by |M| (never a check edge), their nodes sorted, with labels ("" when none)
    and one-layer effects (None when the node has no row)."""
    nodes = pd.DataFrame({"layer": [2, 2, 4], "feature": [1, 5, 7], "effect": [0.5, -0.25, 0.125],
                          "activations": "fair-esm"})
    edges = pd.DataFrame({"mutant": "A1C", "layer_up": 2, "up": [1, 5, 1, 5], "layer_down": 4, "down": [7, 7, 9, 9],
                          "w": [0.5, -0.125, 2.0, 0.5], "linear": [0.25, 0.0625, 1.0, -0.5],
                          "mediated": [0.25, -0.75, -2.0, 0.5], "chosen": ["atp", "atp", "check", "atp"]})
    labels = {(2, 5): "five", (4, 9): "nine", (2, 1): "one"}
    # |M| of the measured edges: 0.25, 0.75, 0.5 -> the top two are 5→7 (-0.75) and 5→9 (0.5)
    assert mutant_graph("P", "A1C", nodes, edges, labels, top_edges=2) == {
        "protein": "P", "mutant": "A1C", "activations": "fair-esm",
        "nodes": [{"id": "L2_F5", "layer": 2, "feature": 5, "label": "five", "effect": -0.25},
                  {"id": "L4_F7", "layer": 4, "feature": 7, "label": "", "effect": 0.125},
                  {"id": "L4_F9", "layer": 4, "feature": 9, "label": "nine", "effect": None}],
        "edges": [{"source": "L2_F5", "target": "L4_F7", "w": -0.125, "M": -0.75, "linear": 0.0625},
                  {"source": "L2_F5", "target": "L4_F9", "w": 0.5, "M": 0.5, "linear": -0.5}]}
    assert mutant_graph("P", "A1C", nodes, edges, labels, top_edges=0)["nodes"] == []


def test_a_mutant_graph_keeps_tied_edges_in_table_order():
    """20 measured edges, |M| 0.25 and 1 in turn, of either sign (more than numpy's insertion-sort cutoff, 16, so
    only a stable sort keeps the ties in order): the top 5 are the first five rows with |M| = 1, rows 1, 3, … 9."""
    edges = pd.DataFrame({"mutant": "A1C", "layer_up": 2, "up": list(range(20)), "layer_down": 4, "down": 7, "w": 1.0,
                          "linear": 0.0, "mediated": [(0.25, -1.0, -0.25, 1.0)[i % 4] for i in range(20)],
                          "chosen": "atp"})
    graph = mutant_graph("P", "A1C", pd.DataFrame(columns=["layer", "feature", "effect"]), edges, {}, top_edges=5)
    assert [e["source"] for e in graph["edges"]] == [f"L2_F{i}" for i in (1, 3, 5, 7, 9)]


def test_graphml_by_hand():
    graph = {"protein": "P", "activations": "fair-esm", "mutant": "A<1>C",
             "nodes": [{"id": "L2_F5", "layer": 2, "feature": 5, "label": "a & b", "effect": -0.25},
                       {"id": "L4_F9", "layer": 4, "feature": 9, "label": "", "effect": None}],
             "edges": [{"source": "L2_F5", "target": "L4_F9", "w": 0.5, "M": -0.75, "linear": 0.0625}]}
    keys = ['  <key id="protein" for="graph" attr.name="protein" attr.type="string"/>',
            '  <key id="mutant" for="graph" attr.name="mutant" attr.type="string"/>',
            '  <key id="activations" for="graph" attr.name="activations" attr.type="string"/>',
            '  <key id="layer" for="node" attr.name="layer" attr.type="int"/>',
            '  <key id="feature" for="node" attr.name="feature" attr.type="int"/>',
            '  <key id="label" for="node" attr.name="label" attr.type="string"/>',
            '  <key id="effect" for="node" attr.name="effect" attr.type="double"/>',
            '  <key id="w" for="edge" attr.name="w" attr.type="double"/>',
            '  <key id="M" for="edge" attr.name="M" attr.type="double"/>',
            '  <key id="linear" for="edge" attr.name="linear" attr.type="double"/>',
            '  <key id="n_mutants" for="edge" attr.name="n_mutants" attr.type="int"/>']
    head = ['<?xml version="1.0" encoding="UTF-8"?>', '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">', *keys]
    assert graphml(graph) == "\n".join([
        *head, '  <graph id="A&lt;1&gt;C" edgedefault="directed">', '    <data key="protein">P</data>',
        '    <data key="mutant">A&lt;1&gt;C</data>', '    <data key="activations">fair-esm</data>',
        '    <node id="L2_F5">', '      <data key="layer">2</data>', '      <data key="feature">5</data>',
        '      <data key="label">a &amp; b</data>', '      <data key="effect">-0.25</data>', "    </node>",
        '    <node id="L4_F9">', '      <data key="layer">4</data>', '      <data key="feature">9</data>',
        '      <data key="label"></data>', "    </node>",  # no effect: left out
        '    <edge id="e0" source="L2_F5" target="L4_F9">', '      <data key="w">0.5</data>',
        '      <data key="M">-0.75</data>', '      <data key="linear">0.0625</data>', "    </edge>",
        "  </graph>", "</graphml>"]) + "\n"
    aggregate = {"nodes": [], "edges": [{"source": "L2_F1", "target": "L4_F7", "w": 1, "M": 0.125, "n_mutants": 3.0},
                                        {"source": "L2_F1", "target": "L4_F8", "w": 0.5, "M": 0.25, "n_mutants": 1}]}
    assert graphml(aggregate) == "\n".join([
        *head, '  <graph id="aggregate" edgedefault="directed">',
        '    <edge id="e0" source="L2_F1" target="L4_F7">', '      <data key="w">1.0</data>',
        '      <data key="M">0.125</data>', '      <data key="n_mutants">3</data>', "    </edge>",
        '    <edge id="e1" source="L2_F1" target="L4_F8">', '      <data key="w">0.5</data>',
        '      <data key="M">0.25</data>', '      <data key="n_mutants">1</data>', "    </edge>",
        "  </graph>", "</graphml>"]) + "\n"


def test_json_is_written_indented_with_nan(tmp_path):
    write_json({"a": float("nan"), "b": [1, 2]}, tmp_path / "g.json")
    assert (tmp_path / "g.json").read_text() == '{\n "a": NaN,\n "b": [\n  1,\n  2\n ]\n}\n'


def edge_frame(rows, **settings_columns):
    """graph_edges rows (mutant, layer_up, up, layer_down, down, w, linear, mediated, chosen)."""
    from esmsae.pipeline.columns import TABLES

    frame = pd.DataFrame(rows, columns=["mutant", "layer_up", "up", "layer_down", "down", "w", "linear", "mediated",
                                        "chosen"])
    values = {"k": 8, "d_sae": 64, "k_down": 4, "d_sae_down": 32, "space": "latent",
              "activations": "interprot"} | settings_columns
    return frame.assign(held_effect=0.0, n_candidates=10, **values).reindex(columns=TABLES["graph_edges"])


# X = 2:1→4:7 in A1C (w 0.5, M 0.5) and D2E (w 0.25, M -0.25): n 2, mean w 0.375, mean M 0.125, mean |M| 0.375;
# Y = 2:5→4:7 in A1C (-0.25, -0.25), D2E (0.75, -0.5), E3F (0.5, 0.25): n 3, mean w 1/3, mean M -1/6, mean |M| 1/3;
# U = 2:2→4:8 in A1C (0.5, -1.0), D2E (1.0, 0.5): n 2, mean w 0.75, mean M -0.25, mean |M| 0.75;
# Z = 4:1→6:7 in D2E (1.0, 1.0): n 1 (another layer pair with X's feature numbers); 2:1→4:9 only ever a check.
AGGREGATE_EDGES = [("A1C", 2, 1, 4, 7, 0.5, 0.0, 0.5, "atp"), ("A1C", 2, 5, 4, 7, -0.25, 0.0, -0.25, "atp"),
                   ("A1C", 2, 1, 4, 9, 1.0, 0.0, 4.0, "check"), ("A1C", 2, 2, 4, 8, 0.5, 0.0, -1.0, "atp"),
                   ("D2E", 2, 1, 4, 7, 0.25, 0.0, -0.25, "atp"), ("D2E", 2, 5, 4, 7, 0.75, 0.0, -0.5, "atp"),
                   ("D2E", 2, 2, 4, 8, 1.0, 0.0, 0.5, "atp"), ("D2E", 4, 1, 6, 7, 1.0, 0.0, 1.0, "atp"),
                   ("E3F", 2, 5, 4, 7, 0.5, 0.0, 0.25, "atp")]


def test_the_aggregate_counts_mutants_and_averages_w_m_and_abs_m():
    table = aggregate_edges(edge_frame(AGGREGATE_EDGES), {(2, 5): "five", (4, 7): "seven"})
    # most mutants first, then the larger mean |M| (U 0.75 before X 0.375, though X's mean M 0.125 > U's -0.25)
    assert table[["layer_up", "up", "layer_down", "down", "n_mutants"]].values.tolist() == \
        [[2, 5, 4, 7, 3], [2, 2, 4, 8, 2], [2, 1, 4, 7, 2], [4, 1, 6, 7, 1]]
    assert table["up_label"].tolist() == ["five", "", "", ""]
    assert table["down_label"].tolist() == ["seven", "", "seven", ""]
    assert table["mean_w"].tolist() == pytest.approx([1 / 3, 0.75, 0.375, 1.0])
    assert table["mean_mediated"].tolist() == pytest.approx([-1 / 6, -0.25, 0.125, 1.0])
    assert table["mean_abs_mediated"].tolist() == pytest.approx([1 / 3, 0.75, 0.375, 1.0])
    assert list(table.columns) == ["layer_up", "up", "up_label", "layer_down", "down", "down_label", "n_mutants",
                                   "mean_w", "mean_mediated", "mean_abs_mediated", "activations"]
    assert (table["activations"] == "interprot").all()
    assert table.index.tolist() == [0, 1, 2, 3]  # rows numbered in their sorted order
    assert aggregate_edges(edge_frame([]), {}).empty


def test_strongest_paths_skip_edges_that_jump_a_layer_and_break_ties_by_nodes():
    from esmsae.tables.graph import strongest_paths

    # 2:2→4:5 and 2:1→4:5 both strength 1.0, 4:5→6:0 strength 2.0 (n 2 × 1.0): two paths tie at 1.0;
    # 2:1→6:3 (strength 10) skips layer 4 and is no path
    aggregate = hand_aggregate([(2, 2, 4, 5, 1, 1.0), (2, 1, 4, 5, 1, -1.0), (4, 5, 6, 0, 2, 1.0),
                                (2, 1, 6, 3, 10, 1.0)])
    assert strongest_paths(aggregate, [2, 4, 6], 5) == [(1.0, [(2, 1), (4, 5), (6, 0)]),
                                                        (1.0, [(2, 2), (4, 5), (6, 0)])]
    assert strongest_paths(aggregate, [2, 4, 6], 1) == [(1.0, [(2, 1), (4, 5), (6, 0)])]
    assert strongest_paths(aggregate, [2, 4, 6], 0) == [] and strongest_paths(aggregate, [2, 4, 6], -1) == []
    # n below 1 is no path at all, even where five one-edge paths exist (never "all but the last")
    fan = hand_aggregate([(4, u, 6, 9 if u <= 3 else 1, 1, 0.5) for u in range(1, 6)])
    assert len(strongest_paths(fan, [4, 6], 5)) == 5 and strongest_paths(fan, [4, 6], -1) == []
    assert strongest_paths(aggregate, [2, 6], 5) == [(10.0, [(2, 1), (6, 3)])]  # with layer 4 not in the graph


def test_edge_ranking_agreement_counts_a_check_exactly_at_the_floor():
    edges = edge_frame([
        # D2E 2→4: no AtP-kept edge, so nothing can be missed
        ("D2E", 2, 1, 4, 7, 0.0, 0.0, 0.125, "check"),
        # A1C 2→4: kept |M| 0.5, 4, 1, 2 -> floor 0.5; checks |M| 0.5 (exactly at the floor: missed), 0.25 (not), 0.75
        ("A1C", 2, 1, 4, 7, 0.0, 1.0, 0.5, "atp"), ("A1C", 2, 1, 4, 8, 0.0, 2.0, -4.0, "atp"),
        ("A1C", 2, 2, 4, 7, 0.0, 3.0, 1.0, "atp"), ("A1C", 2, 2, 4, 8, 0.0, 4.0, 2.0, "atp"),
        ("A1C", 2, 3, 4, 7, 0.0, 0.5, -0.5, "check"), ("A1C", 2, 3, 4, 8, 0.0, 0.5, 0.25, "check"),
        ("A1C", 2, 3, 4, 9, 0.0, 0.5, 0.75, "check"),
        # A1C 4→6: linear 1, 2, 3 against M 3, 2, 1: ρ = -1, no checks
        ("A1C", 4, 1, 6, 7, 0.0, 1.0, 3.0, "atp"), ("A1C", 4, 2, 6, 7, 0.0, 2.0, 2.0, "atp"),
        ("A1C", 4, 3, 6, 7, 0.0, 3.0, 1.0, "atp")])
    table = edge_ranking_agreement(edges)
    assert table[["mutant", "layer_up", "layer_down", "n_measured", "n_checked", "n_missed"]].values.tolist() == [
        ["D2E", 2, 4, 0, 1, 0], ["A1C", 2, 4, 4, 3, 2], ["A1C", 4, 6, 3, 0, 0]]
    # A1C 2→4: ranks of linear 1 2 3 4, of the signed M 2 1 3 4: Σd² = 2, ρ = 1 − 6·2/(4·15) = 0.8
    # (the ranks of |M|, 1 4 2 3, would give 0.4)
    assert np.isnan(table["spearman"].iloc[0]) and table["spearman"].iloc[1:].tolist() == pytest.approx([0.8, -1.0])
    empty = edge_ranking_agreement(edges.iloc[:0])
    assert empty.empty and list(empty.columns) == ["mutant", "layer_up", "layer_down", "n_measured", "spearman",
                                                   "n_checked", "n_missed"]


def test_mediated_fractions_sum_absolute_changes_over_features_per_mutant_and_pair():
    from esmsae.tables.graph import mediated_fractions

    shares = pd.DataFrame({
        "mutant": ["A1C", "A1C", "A1C", "A1C", "D2E"], "layer_up": [2, 2, 4, 4, 2], "layer_down": [4, 4, 6, 6, 4],
        "effect": [0.75, -0.25, 0.0, 0.0, -0.5], "held_effect": [0.25, 0.25, 0.5, 0.5, -0.125],
        "null_held_effect": [0.5, -0.5, 0.25, 0.25, -0.5]})
    table = mediated_fractions(shares)
    assert table[["layer_up", "layer_down", "mutant"]].values.tolist() == [[2, 4, "A1C"], [4, 6, "A1C"], [2, 4, "D2E"]]
    # A1C 2→4: Σ|effect| = 1 (exactly at the bar of "moves the score"); (|0.5| + |-0.5|) / 1 = 1 (|Σ| would be 0);
    # null (|0.25| + |0.25|) / 1 = 0.5. A1C 4→6 moves nothing: NaN, though its held effects are not 0.
    # D2E: |-0.375| / 0.5 = 0.75, null 0.
    assert table["mediated_fraction"].tolist()[0::2] == [1.0, 0.75]
    assert table["null_fraction"].tolist()[0::2] == [0.5, 0.0]
    assert np.isnan(table["mediated_fraction"].iloc[1]) and np.isnan(table["null_fraction"].iloc[1])  # not x / 0
    empty = mediated_fractions(shares.iloc[:0])
    assert empty.empty and list(empty.columns) == ["layer_up", "layer_down", "mutant", "mediated_fraction",
                                                   "null_fraction"]


def share_frame(rows, **settings_columns):
    """graph_shares rows (mutant, layer_up, layer_down, up, effect, held_effect, null_held_effect, mediated_share,
    null_share)."""
    from esmsae.pipeline.columns import TABLES

    frame = pd.DataFrame(rows, columns=["mutant", "layer_up", "layer_down", "up", "effect", "held_effect",
                                        "null_held_effect", "mediated_share", "null_share"])
    values = {"k": 8, "d_sae": 64, "k_down": 4, "d_sae_down": 32, "space": "latent",
              "activations": "interprot"} | settings_columns
    return frame.assign(held="7", null_held="9", **values).reindex(columns=TABLES["graph_shares"])


# P, 2→4: per-mutant fractions (Σ|effect − held| / Σ|effect|) A1C (0.5 + 0.5) / 1.5 = 2/3, D2E 0.375 / 0.5 = 0.75,
# E3F (0.25 + 1) / 1.25 = 1; nulls A1C (0.25 + 0.25) / 1.5 = 1/3, D2E 0, E3F 1 (a tie: not above); F4G moves nothing.
P_24 = [("A1C", 2, 4, 1, 1.0, 0.5, 0.75, 0.5, 0.25), ("A1C", 2, 4, 5, -0.5, 0.0, -0.25, 1.0, 0.5),
        ("D2E", 2, 4, 1, -0.5, -0.125, -0.5, 0.75, 0.0),
        ("E3F", 2, 4, 1, 1.0, 0.75, 0.75, 0.25, 0.25), ("E3F", 2, 4, 2, 0.25, -0.75, -0.75, 4.0, 4.0),
        ("F4G", 2, 4, 1, 0.0, 0.125, 0.0, np.nan, np.nan)]
# P, 4→6: A1C alone, fraction (2 − 1) / 2 = 0.5, null 0
P_46 = [("A1C", 4, 6, 7, 2.0, 1.0, 2.0, 0.5, 0.0)]
Q_24 = [("A1C", 2, 4, 1, 1.0, 0.0, 1.0, 1.0, 0.0)]
# Q, 1→4 (another layer pair ending at 4): fraction 0.5, null 0
Q_14 = [("A1C", 1, 4, 1, 1.0, 0.5, 1.0, 0.5, 0.0)]
# AtP per mutant: P 2→4 ρ 1 (A1C), -1 (D2E), 1 (E3F: a check at the floor |M| 1 and one above, both missed);
# P 4→6 ρ -1 and one check above the floor; Q 2→4 ρ -1.
P_EDGES = [(m, 2, u, 4, 7, 0.5, float(u), float(x), "atp")
           for m, xs in (("A1C", (1, 2, 3)), ("D2E", (3, 2, 1)), ("E3F", (1, 2, 3))) for u, x in zip((1, 2, 3), xs,
                                                                                                    strict=True)]
P_EDGES += [("A1C", 2, 4, 4, 8, 0.5, 0.0, 0.5, "check"), ("D2E", 2, 4, 4, 8, 0.5, 0.0, 0.5, "check"),
            ("E3F", 2, 4, 4, 8, 0.5, 0.0, -1.0, "check"), ("E3F", 2, 5, 4, 8, 0.5, 0.0, 3.0, "check")]
P_EDGES += [("A1C", 4, u, 6, 7, 0.5, float(u), float(4 - u), "atp") for u in (1, 2, 3)]
P_EDGES += [("A1C", 4, 4, 6, 7, 0.5, 0.0, 5.0, "check")]
Q_EDGES = [("A1C", 2, u, 4, 7, 0.5, float(u), float(4 - u), "atp") for u in (1, 2, 3)]
# Q 1→4: ρ 1 and a missed check; never counted with Q 2→4, though both end at layer 4
Q_EDGES_14 = [("A1C", 1, u, 4, 7, 0.5, float(u), float(u), "atp") for u in (1, 2, 3)] + \
    [("A1C", 1, 4, 4, 7, 0.5, 0.0, 5.0, "check")]


def check_mediation_rows(table):
    assert table[["protein", "layer_up", "layer_down", "n_mutants"]].values.tolist() == [
        ["P", 2, 4, 3], ["P", 4, 6, 1], ["Q", 1, 4, 1], ["Q", 2, 4, 1]]  # layer pairs in order, per protein
    p24, p46, q14, q24 = (table.iloc[i] for i in range(4))
    # P 2→4: real 2/3, 3/4, 1: mean 29/36, deviations -5/36, -2/36, 7/36, variance 78/1296 / 2, s.e.m. √13/36
    assert p24["mediated_fraction_mean"] == pytest.approx(29 / 36)
    assert p24["mediated_fraction_sem"] == pytest.approx(np.sqrt(13) / 36)
    # null 1/3, 0, 1: mean 4/9, deviations -1/9, -4/9, 5/9, variance 42/81 / 2, s.e.m. √7/9
    assert p24["null_fraction_mean"] == pytest.approx(4 / 9)
    assert p24["null_fraction_sem"] == pytest.approx(np.sqrt(7) / 9)
    assert p24["frac_mutants_above_null"] == pytest.approx(2 / 3)  # E3F's tie is not above
    assert p24["wilcoxon_p"] == wilcoxon_p(np.array([1 / 3, 0.75, 0.0]))  # the paired differences
    # per-feature shares pooled over the pair's mutants: median of 0.5, 1, 0.75, 0.25, 4 is 0.75 (mean 1.3);
    # nulls 0.25, 0.5, 0, 0.25, 4: median 0.25 (mean 1)
    assert p24["median_feature_share"] == 0.75 and p24["median_null_share"] == 0.25
    assert p24["atp_spearman_mean"] == pytest.approx(1 / 3)  # mean of 1, -1, 1 (the median would be 1)
    assert (p24["atp_missed"], p24["atp_checked"]) == (2, 4)
    assert (p24["k"], p24["d_sae"], p24["k_down"], p24["d_sae_down"], p24["space"]) == (8, 64, 4, 32, "latent")
    # P 4→6 on its own, never pooled with 2→4
    assert (p46["mediated_fraction_mean"], p46["null_fraction_mean"], p46["frac_mutants_above_null"]) == (0.5, 0.0, 1.0)
    assert np.isnan(p46["mediated_fraction_sem"]) and np.isnan(p46["wilcoxon_p"])
    assert (p46["median_feature_share"], p46["median_null_share"]) == (0.5, 0.0)
    assert p46["atp_spearman_mean"] == pytest.approx(-1.0)
    assert (p46["atp_missed"], p46["atp_checked"]) == (1, 1)
    assert (p46["k"], p46["d_sae"], p46["k_down"], p46["d_sae_down"]) == (4, 32, 2, 16)
    # Q with its own edges
    assert (q24["mediated_fraction_mean"], q24["atp_checked"], q24["atp_missed"]) == (1.0, 0, 0)
    assert q24["atp_spearman_mean"] == pytest.approx(-1.0)
    assert (q14["mediated_fraction_mean"], q14["atp_checked"], q14["atp_missed"]) == (0.5, 1, 1)
    assert q14["atp_spearman_mean"] == pytest.approx(1.0)


def test_the_mediation_table_per_protein_and_layer_pair_by_hand():
    from esmsae.pipeline.columns import TABLES

    other = {"k": 4, "d_sae": 32, "k_down": 2, "d_sae_down": 16}
    # 4→6 first and Q's pairs out of order: the table sorts the layer pairs
    shares = {"P": pd.concat([share_frame(P_46, **other), share_frame(P_24)]),
              "Q": pd.concat([share_frame(Q_24), share_frame(Q_14)])}
    table = mediation_table(shares, {"P": edge_frame(P_EDGES), "Q": edge_frame(Q_EDGES + Q_EDGES_14)})
    check_mediation_rows(table)
    empty = mediation_table({"P": share_frame([])}, {"P": edge_frame([])})
    assert empty.empty and list(empty.columns) == TABLES["mediated_shares"]


def test_tabulate_mediation_reads_every_layer_file_of_each_protein(tmp_path):
    from esmsae.pipeline.columns import read_table
    from esmsae.pipeline.io import write_csv
    from esmsae.tables.graph import tabulate_mediation

    other = {"k": 4, "d_sae": 32, "k_down": 2, "d_sae_down": 16}
    files = {("P", 2): (share_frame(P_24), edge_frame(P_EDGES[:-4])), ("P", 4): (share_frame(P_46, **other),
                                                                               edge_frame(P_EDGES[-4:])),
             ("Q", 2): (share_frame(Q_24), edge_frame(Q_EDGES)), ("Q", 1): (share_frame(Q_14), edge_frame(Q_EDGES_14))}
    shares, edges = {}, {}
    for (protein, layer), (share, edge) in files.items():
        shares[protein, layer] = tmp_path / f"s{protein}{layer}.csv"
        edges[protein, layer] = tmp_path / f"e{protein}{layer}.csv"
        write_csv(share, shares[protein, layer])
        write_csv(edge, edges[protein, layer])
    tabulate_mediation(shares, edges, tmp_path / "out.csv")
    check_mediation_rows(read_table(tmp_path / "out.csv", "mediated_shares"))


def test_assemble_graphs_writes_each_mutant_and_the_aggregate(tmp_path):
    from esmsae.pipeline.columns import TABLES, read_table
    from esmsae.pipeline.io import write_csv
    from esmsae.tables.graph import assemble_graphs

    def nodes(rows, layer_up, layer_down):
        return pd.DataFrame(rows, columns=["mutant", "layer", "feature", "effect"]).assign(
            layer_up=layer_up, layer_down=layer_down, k=8, d_sae=64, k_down=4, d_sae_down=32, space="latent",
            activations="interprot")

    paths = {"n2": nodes([("A1C", 2, 1, 0.5), ("A1C", 4, 7, 0.25), ("D2E", 2, 5, -1.0), ("D2E", 4, 7, 0.125)], 2, 4),
             "n4": nodes([("A1C", 4, 7, 0.25), ("A1C", 6, 7, 2.0), ("D2E", 4, 1, 1.0), ("D2E", 6, 7, 0.5)], 4, 6),
             "e2": edge_frame([row for row in AGGREGATE_EDGES if row[1] == 2]),
             # A1C has a row in each edge file, both numbered 0 in their file
             "e4": edge_frame([("A1C", 4, 3, 6, 7, 0.5, 0.0, 0.125, "atp")]
                              + [row for row in AGGREGATE_EDGES if row[1] == 4])}
    for name, frame in paths.items():
        write_csv(frame, tmp_path / f"{name}.csv")
    labels = pd.DataFrame({"layer": [2, 4], "feature": [5, 7], "label": ["five", "seven"]}).reindex(
        columns=TABLES["feature_labels"])
    write_csv(labels, tmp_path / "labels.csv")
    for _ in range(2):  # into a folder not there yet (nor its parent), then again over it: a rerun
        assemble_graphs("P", {2: tmp_path / "n2.csv", 4: tmp_path / "n4.csv"},
                        {2: tmp_path / "e2.csv", 4: tmp_path / "e4.csv"}, tmp_path / "labels.csv", 2,
                        tmp_path / "out" / "graphs", tmp_path / "aggregate.csv", tmp_path / "agg.graphml")
    assert sorted(p.name for p in (tmp_path / "out" / "graphs").iterdir()) == [
        "P_A1C.graphml", "P_A1C.json", "P_D2E.graphml", "P_D2E.json"]
    # D2E over both layer pairs: measured |M| 0.25 (2:1→4:7), 0.5 (2:5→4:7), 0.5 (2:2→4:8), 1 (4:1→6:7): the top two
    # are 4:1→6:7 and the first of the ties in file order, 2:5→4:7
    d2e = json.loads((tmp_path / "out" / "graphs" / "P_D2E.json").read_text())
    assert (d2e["protein"], d2e["mutant"], d2e["activations"]) == ("P", "D2E", "interprot")
    assert [(e["source"], e["target"], e["M"]) for e in d2e["edges"]] == [("L4_F1", "L6_F7", 1.0),
                                                                            ("L2_F5", "L4_F7", -0.5)]
    assert [(n["id"], n["label"], n["effect"]) for n in d2e["nodes"]] == [
        ("L2_F5", "five", -1.0), ("L4_F1", "", 1.0), ("L4_F7", "seven", 0.125), ("L6_F7", "", 0.5)]
    assert (tmp_path / "out" / "graphs" / "P_D2E.graphml").read_text() == graphml(d2e)
    # A1C: measured |M| 0.5, 0.25, 1 (2:2→4:8) and 0.125 (4:3→6:7, the other file): the top two
    a1c = json.loads((tmp_path / "out" / "graphs" / "P_A1C.json").read_text())
    assert [(e["source"], e["target"], e["M"]) for e in a1c["edges"]] == [("L2_F2", "L4_F8", -1.0),
                                                                            ("L2_F1", "L4_F7", 0.5)]
    table = read_table(tmp_path / "aggregate.csv", "graph_aggregate")
    assert table[["up", "down", "n_mutants"]].values.tolist() == [[5, 7, 3], [2, 8, 2], [1, 7, 2], [1, 7, 1],
                                                                  [3, 7, 1]]
    # the aggregate graph: its top two edges (Y in 3 mutants, U in 2), mean w and M, counts and labelled nodes
    root = ElementTree.fromstring((tmp_path / "agg.graphml").read_text())
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert root.find("g:graph", ns).get("id") == "aggregate"
    assert {d.get("key"): d.text for d in root.find("g:graph", ns).findall("g:data", ns)} == {
        "protein": "P", "mutant": "aggregate", "activations": "interprot"}
    found = [(e.get("source"), e.get("target"), {d.get("key"): float(d.text) for d in e})
             for e in root.iter(f"{{{ns['g']}}}edge")]
    assert found == [("L2_F5", "L4_F7", {"w": pytest.approx(1 / 3), "M": pytest.approx(-1 / 6), "n_mutants": 3}),
                     ("L2_F2", "L4_F8", {"w": 0.75, "M": -0.25, "n_mutants": 2})]
    node_labels = {n.get("id"): {d.get("key"): d.text for d in n} for n in root.iter(f"{{{ns['g']}}}node")}
    assert node_labels == {"L2_F2": {"layer": "2", "feature": "2", "label": None},  # an empty label reads as None
                           "L2_F5": {"layer": "2", "feature": "5", "label": "five"},
                           "L4_F7": {"layer": "4", "feature": "7", "label": "seven"},
                           "L4_F8": {"layer": "4", "feature": "8", "label": None}}


def hand_link(mutant, n_nodes, chosen, n_candidates, d_sae_down=32):
    nodes = pd.DataFrame({"layer": [2] * n_nodes, "feature": list(range(n_nodes)), "effect": 0.5})
    edges = pd.DataFrame({"up": 0, "down": list(range(len(chosen))), "w": 0.25, "linear": 0.125, "mediated": 0.5,
                          "held_effect": 0.0, "chosen": chosen})
    shares = pd.DataFrame({"up": [0], "effect": [0.5], "held": ["1"], "held_effect": [0.25], "mediated_share": [0.5],
                           "null_held": ["2"], "null_held_effect": [0.5], "null_share": [0.0]})
    return Link(mutant=mutant, layer_up=2, layer_down=4, nodes=nodes, edges=edges, shares=shares,
                n_candidates=n_candidates, d_sae_down=d_sae_down)


def test_link_tables_and_summary(tmp_path):
    from esmsae.analyses.api import LayerMeta
    from esmsae.analyses.graph import link_tables, write_links
    from esmsae.pipeline.columns import PAIR_SETTINGS, TABLES, read_table

    links = [hand_link("A1C", 3, ["atp", "atp", "check"], 7), hand_link("D2E", 1, ["atp"], 2)]
    assert summary(links[0]) == "3 nodes, 7 candidate edges, 2 measured (+1 checks)"
    meta, config = LayerMeta(protein="P", layer=2, k=8, d_sae=64, activations="fair-esm"), settings(4, k2=4)
    tables = link_tables(links, meta, config)
    for kind, name, rows in (("graph_nodes", "nodes", 4), ("graph_edges", "edges", 4), ("graph_shares", "shares", 2)):
        frame = tables[name]
        assert list(frame.columns) == TABLES[kind] and len(frame) == rows
        assert frame[["layer_up", "layer_down", *PAIR_SETTINGS]].drop_duplicates(
            ).values.tolist() == [[2, 4, 8, 64, 4, 32, "latent", "fair-esm"]]
    assert tables["nodes"]["mutant"].tolist() == ["A1C"] * 3 + ["D2E"]
    assert tables["edges"]["n_candidates"].tolist() == [7, 7, 7, 2]  # each mutant's own count
    outputs = {kind: tmp_path / f"{kind}.csv" for kind in ("nodes", "edges", "shares")}
    write_links(links, outputs, config, meta)
    for kind, name in (("graph_nodes", "nodes"), ("graph_edges", "edges"), ("graph_shares", "shares")):
        pd.testing.assert_frame_equal(read_table(outputs[name], kind), tables[name], check_dtype=False)
    one = link_tables(links[1:], meta, config)
    assert one["nodes"]["d_sae_down"].tolist() == [32] and one["edges"]["n_candidates"].tolist() == [2]
    empty = link_tables([], meta, config)
    assert all(list(empty[name].columns) == TABLES[kind] and empty[name].empty
               for kind, name in (("graph_nodes", "nodes"), ("graph_edges", "edges"), ("graph_shares", "shares")))
