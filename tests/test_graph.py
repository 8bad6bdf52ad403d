"""Cross-layer feature graphs: the two-SAE splice against fair-esm, and the graph's bookkeeping in closed form."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.graph import PairContext, link
from esmsae.analyses.patching import changed_features, single_feature_patches
from esmsae.analyses.scoring import wt_log_probs, wt_marginal
from esmsae.config.settings import PairSettings
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.pair import LayerPair
from esmsae.model.splice import Effects
from esmsae.tables.graph import aggregate_edges, edge_ranking_agreement, graphml, mediation_table, mutant_graph

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


def linear_context(lm, saes, splices, layer1, layer2, seed=0):
    """A stand-in for the two-SAE splice whose mediated effects are known in closed form:
    ``effect_a|H = c_a + Σ_{b ∉ H} W[a, b] g_b``, with g the real ∂S/∂z_b at the WT at ℓ2 (so AtP's linear
    estimate ``W[a, b] g_b`` is exact: M(a→b) = W[a, b] g_b)."""
    view = full_view(splices[layer1], MUTANT)
    ctx = PairContext(saes[layer2], settings(layer2))
    _, lower = ctx.for_engine(splices[layer1])
    with torch.no_grad():
        states2 = lm.between(view.hidden.unsqueeze(0), layer1, layer2)[0]
    view2 = lower.view(MUTANT, states2, "latent")
    v = view2.start.unsqueeze(0).clone().requires_grad_(True)
    slope = view2.differentiate(lambda score: torch.autograd.grad(score(v).sum(), v)[0][0]).sum(0)
    up, down = changed_features(view), changed_features(view2)
    d1, d2 = saes[layer1].info.d_sae, saes[layer2].info.d_sae
    rng = np.random.default_rng(seed)
    W = torch.zeros(d1, d2, dtype=torch.float64)
    W[np.ix_(up.numpy(), down.numpy())] = torch.tensor(rng.normal(size=(len(up), len(down))) *
                                                       (rng.random((len(up), len(down))) < 0.5))
    c = torch.tensor(rng.normal(size=d1) * 0.01)

    class Linear:
        sae2 = SimpleNamespace(info=SimpleNamespace(d_sae=d2))

        def links(self, view, values, hold):
            a = torch.nonzero(values != view.start.unsqueeze(0))[:, 2]  # the one feature each row patches
            through = W[a] * slope.double()
            effects = c[a] + (through * ~hold).sum(-1)
            return Effects(scores=effects, baseline=torch.zeros_like(effects), effects=effects), W[a].unsqueeze(1)

    ctx._built[id(splices[layer1])] = (Linear(), lower)
    return view, ctx, W, c, slope.double(), up


@pytest.mark.parametrize("layer1,layer2", [(1, 2), (2, 4)])
def test_mediated_effects_and_shares_in_closed_form(lm, saes, splices, layer1, layer2):
    view, ctx, W, c, g, up = linear_context(lm, saes, splices, layer1, layer2)
    result = link(view, settings(layer2), ctx)
    M = W * g  # M(a→b) = W[a, b] g_b
    for r in result.edges.itertuples():
        assert r.mediated == pytest.approx(float(M[r.up, r.down]), abs=1e-12)
        assert r.linear == pytest.approx(float(M[r.up, r.down]), abs=1e-9)  # AtP exact for a linear model
        assert r.w == pytest.approx(float(W[r.up, r.down]))
    kept = result.edges[result.edges["chosen"] == "atp"]
    candidates = int((W[up] != 0).sum())
    assert result.n_candidates == candidates and len(kept) == min(12, candidates)
    assert kept["mediated"].abs().min() >= result.edges.loc[result.edges["chosen"] == "check", "mediated"].abs().max()
    for r in result.shares.itertuples():
        held = [int(b) for b in r.held.split(";")]
        expected_top = kept[kept["up"] == r.up].sort_values("mediated", key=np.abs, ascending=False)["down"][:3]
        assert held == expected_top.tolist()
        effect = float(c[r.up] + M[r.up].sum())
        assert r.effect == pytest.approx(effect, abs=1e-12)
        assert r.mediated_share == pytest.approx(float(M[r.up, held].sum()) / effect, rel=1e-9)
        null = [int(b) for b in r.null_held.split(";")]  # as many linked features, drawn at random
        assert len(null) == len(set(null)) == len(held) and all(W[r.up, b] != 0 for b in null)
        assert r.null_share == pytest.approx(float(M[r.up, null].sum()) / effect, rel=1e-9)
        assert r.null_held_effect == pytest.approx(effect - float(M[r.up, null].sum()), abs=1e-12)
    agreement = edge_ranking_agreement(result.edges.assign(mutant=MUTANT.name, layer_up=layer1, layer_down=layer2))
    assert agreement["spearman"].iloc[0] == pytest.approx(1.0) and agreement["n_missed"].iloc[0] == 0


def test_check_edges_are_seeded_and_outside_the_kept_ones(lm, saes, splices):
    view, ctx, *_ = linear_context(lm, saes, splices, 1, 3)
    one = link(view, settings(3, max_edges=5, check_edges=4), ctx)
    two = link(view, settings(3, max_edges=5, check_edges=4), ctx)
    other = link(view, settings(3, max_edges=5, check_edges=4, seed=9), ctx)
    pd.testing.assert_frame_equal(one.edges, two.edges)
    keys = {(r.up, r.down) for r in one.edges.itertuples() if r.chosen == "atp"}
    checks = {(r.up, r.down) for r in one.edges.itertuples() if r.chosen == "check"}
    assert len(checks) == 4 and not keys & checks
    assert checks != {(r.up, r.down) for r in other.edges.itertuples() if r.chosen == "check"}


def test_graph_files_and_tables_by_hand():
    nodes = pd.DataFrame({"layer": [2, 2, 4], "feature": [1, 5, 7], "effect": [0.5, -0.2, 0.1]})
    edges = pd.DataFrame({"mutant": "A1C", "layer_up": 2, "up": [1, 5, 1], "layer_down": 4, "down": [7, 7, 9],
                          "w": [0.3, -0.1, 0.2], "linear": [0.1, 0.05, 0.0], "mediated": [0.2, -0.4, 0.01],
                          "held_effect": [0.3, 0.2, 0.49], "chosen": ["atp", "atp", "check"]})
    one = mutant_graph("P", "A1C", nodes, edges, {(2, 1): "L-identity; promotes L"}, top_edges=1)
    assert [e["M"] for e in one["edges"]] == [-0.4]  # the largest |M| among measured edges; checks never drawn
    assert {n["id"] for n in one["nodes"]} == {"L2_F5", "L4_F7"}
    assert json.loads(json.dumps(one))["nodes"][0]["effect"] == -0.2
    root = ElementTree.fromstring(graphml(mutant_graph("P", "A1C", nodes, edges, {(2, 1): "L & <x>"}, 5)))
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert len(root.findall(".//g:node", ns)) == 3 and len(root.findall(".//g:edge", ns)) == 2
    assert any(d.text == "L & <x>" for d in root.findall(".//g:data", ns))  # labels escaped, read back
    second = edges.assign(mutant="D2E", mediated=[0.4, -0.2, 0.3])
    table = aggregate_edges(pd.concat([edges, second]), {})
    assert table[["up", "down", "n_mutants"]].values.tolist() == [[1, 7, 2], [5, 7, 2]]
    assert table.loc[0, "mean_mediated"] == pytest.approx(0.3)
    counted = {"nodes": [], "edges": [{"source": "L2_F1", "target": "L4_F7", "w": 0.5, "M": 0.3, "n_mutants": 2}]}
    edge = ElementTree.fromstring(graphml(counted)).find(".//g:edge", ns)
    assert {d.get("key"): d.text for d in edge} == {"w": "0.5", "M": "0.3", "n_mutants": "2"}  # the aggregate's counts
    shares = pd.DataFrame({"mutant": ["A1C", "A1C", "D2E", "E3F"], "layer_up": 2, "up": [1, 5, 1, 1],
                           "effect": [0.5, -0.2, 1.0, 0.0], "held": "7", "held_effect": [0.3, 0.2, 0.5, 0.1],
                           "mediated_share": [0.4, 2.0, 0.5, np.nan], "null_held": "9",
                           "null_held_effect": [0.5, -0.1, 0.9, 0.0], "null_share": [0.0, 0.5, 0.1, np.nan],
                           "layer_down": 4, "k": 8, "d_sae": 64, "k_down": 4, "d_sae_down": 32, "space": "latent"})
    summary = mediation_table({"P": shares}, {"P": pd.concat([edges, second])}).iloc[0]
    # per mutant Σ|effect − held| / Σ|effect|: A1C (0.2 + 0.4) / 0.7, D2E 0.5 / 1.0; E3F moves nothing: left out
    assert summary["n_mutants"] == 2
    assert summary["mediated_fraction_mean"] == pytest.approx((0.6 / 0.7 + 0.5) / 2)
    assert summary["mediated_fraction_sem"] == pytest.approx(abs(0.6 / 0.7 - 0.5) / 2)  # sd/√2 of two values
    # the null: A1C (0 + 0.1) / 0.7, D2E 0.1 / 1.0; both mutants above it
    assert summary["null_fraction_mean"] == pytest.approx((0.1 / 0.7 + 0.1) / 2)
    assert summary["frac_mutants_above_null"] == 1.0
    assert summary["median_feature_share"] == pytest.approx(0.5) and summary["median_null_share"] == pytest.approx(0.1)
    assert (summary["k"], summary["d_sae"], summary["k_down"], summary["d_sae_down"]) == (8, 64, 4, 32)
    assert summary["atp_checked"] == 2 and summary["atp_missed"] == 1  # D2E's check (|M| 0.3) beats its kept 0.2
    assert dataclasses.is_dataclass(settings(2))


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
