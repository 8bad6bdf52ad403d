"""Activation patching: exact controls, exact feature sets, agreement with fair-esm's forward."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.api import LayerMeta
from esmsae.analyses.patching import (
    PATCHING,
    Patches,
    changed_features,
    mutant_rng,
    patch_mutant,
    patch_protein,
    patches_frame,
    plan_patches,
    single_feature_patches,
    summary,
    write_patches,
)
from esmsae.analyses.scoring import wt_log_probs, wt_marginal
from esmsae.inputs.mutations import parse_mutant
from esmsae.pipeline.columns import CONTROLS, PATCH_COLUMNS, read_table
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.resume import WorkFolder

from .analysis_stubs import (
    BASE,
    MUT_PRE,
    MUT_Z,
    WEIGHTS,
    WT_PRE,
    WT_Z,
    LinearEngine,
    code,
    rule_block,
    runs_analysis,
    stub_view,
    two_site_view,
)
from .conftest import LAYERS, WT, patch_settings, splice_every_layer, view_of
from .reference import hooked_logits, score_from_logits

SEQ = WT["EPHB2_HUMAN"]
MUTANTS = [parse_mutant(t, SEQ) for t in ("F2A", "W8R", "M14K", "L41P", "M61E")]
DOUBLE = parse_mutant("F2A:L41P", SEQ)


def site_values(cell) -> np.ndarray:
    """A patching table cell: one number, or ':'-joined numbers for a multi-site mutant."""
    return np.array([float(v) for v in str(cell).split(":")])


@pytest.fixture(scope="module")
def splices(lm, saes):
    return splice_every_layer(lm, saes, SEQ)


def codes(splice, mutant, space="latent"):
    view = view_of(splice, mutant, space=space)
    return view.wt, view.mut


@pytest.mark.parametrize("space", ["latent", "pre"])
@pytest.mark.parametrize("layer", LAYERS)
def test_rows_noop_and_baseline(lm, splices, layer, space):
    table = patch_protein(splices[layer], MUTANTS, patch_settings(space=space))
    assert list(table.columns) == PATCH_COLUMNS
    assert set(table["control"]) <= set(CONTROLS) and (table["control"] == "real").any()
    assert (table.loc[table["control"] == "noop", "effect"] == 0.0).all()
    assert (table["layer"] == layer).all() and (table["space"] == space).all() and (table["k"] == 8).all()
    expected = dict(zip([m.name for m in MUTANTS], wt_marginal(lm, wt_log_probs(lm, SEQ), MUTANTS), strict=True))
    assert (table["baseline_score"] - table["mutant"].map(expected)).abs().max() <= 1e-5
    assert (table["patched_score"] - table["baseline_score"] - table["effect"]).abs().max() <= 1e-6
    real = table[table["control"] == "real"]
    assert (real["patched_value"] == (real["mut_latent"] if space == "latent" else real["mut_pre"])).all()


@pytest.mark.parametrize("layer", LAYERS)
def test_batched_effects_equal_fair_esm_forward(lm, splices, layer):
    """A few patches per mutant, re-done from scratch with a hook on fair-esm's module."""
    splice = splices[layer]
    table = patch_protein(splice, MUTANTS[:2], patch_settings())
    for mutant in MUTANTS[:2]:
        wt, mut = codes(splice, mutant)
        pos = mutant.sites[0].pos
        base = score_from_logits(hooked_logits(lm, SEQ, layer, {}), lm, mutant)
        rows = table[(table["mutant"] == mutant.name) & table["control"].isin(["real", "random"])].head(4)
        for row in rows.itertuples():
            z = wt.z[0].clone()
            z[row.feature] = row.patched_value
            vec = splice.sae.decode(z, wt.mu[0], wt.sigma[0]) + wt.error[0]
            ref = score_from_logits(hooked_logits(lm, SEQ, layer, {pos: vec}), lm, mutant) - base
            assert abs(row.effect - ref) <= 1e-5


@pytest.mark.parametrize("layer", LAYERS)
def test_latent_features_outside_topk_union_have_zero_effect(splices, layer):
    """Patch every feature; the ones outside the WT ∪ mutant top-k sets change nothing, exactly."""
    splice = splices[layer]
    for mutant in MUTANTS:
        wt, mut = codes(splice, mutant)
        every = torch.arange(wt.z.shape[-1])
        full = splice.effects(wt, single_feature_patches(wt.z, mut.z, every), splice.score_spec(mutant))
        union = ((wt.z != 0) | (mut.z != 0)).any(0)
        changed = changed_features(view_of(splice, mutant))
        assert bool(union[changed].all())
        assert torch.equal(full.effects[~union], torch.zeros(int((~union).sum())))
        unchanged = torch.ones_like(union)
        unchanged[changed] = False
        assert torch.equal(full.effects[unchanged], torch.zeros(int(unchanged.sum())))
        table = patch_protein(splice, [mutant], patch_settings())
        real = table[table["control"] == "real"]
        assert real["feature"].tolist() == changed.tolist()
        assert (torch.tensor(real["effect"].to_numpy()) - full.effects[changed].double()).abs().max() <= 1e-6


@pytest.mark.parametrize("space", ["latent", "pre"])
@pytest.mark.parametrize("layer", LAYERS)
def test_changed_set_is_exact_and_counts_any_site(splices, layer, space):
    """Brute force: set each feature alone to its mutant value at every site (re-TopK in pre space)
    and compare the latents with z_wt. For a double mutant, a feature that changes the latents at
    one site only is in the set (changed at *any* site)."""
    splice = splices[layer]
    one_site_only = 0
    for mutant in [*MUTANTS, DOUBLE]:
        view = view_of(splice, mutant, space=space)
        expected = []
        for j in range(view.start.shape[-1]):
            values = view.start.clone()
            values[:, j] = view.end[:, j]
            moved = (view.latents(values) != view.wt.z).any(-1)  # per site
            if bool(moved.any()):
                expected.append(j)
                one_site_only += int(mutant is DOUBLE and not bool(moved.all()))
        assert changed_features(view).tolist() == expected
    if space == "latent":
        assert one_site_only > 0  # the double mutant has features that move at one of its sites only


def test_controls_by_definition(splices):
    """real = the changed set; noop exactly 0; stable = the stable_n active features (WT or mutant) with the
    smallest |Δpre|, each at its mutant value; random = a feature outside the changed set per real patch,
    its latent raised by that real patch's |Δz| (not lowered: a sign error would fail here)."""
    splice = splices[2]
    one = patch_protein(splice, [*MUTANTS, DOUBLE], patch_settings(seed=7))
    two = patch_protein(splice, [*MUTANTS, DOUBLE], patch_settings(seed=7))
    other = patch_protein(splice, [*MUTANTS, DOUBLE], patch_settings(seed=8))
    pd.testing.assert_frame_equal(one, two)
    assert not one[one["control"] == "random"]["feature"].equals(other[other["control"] == "random"]["feature"])
    for mutant in [*MUTANTS, DOUBLE]:
        rows = one[one["mutant"] == mutant.name]
        view = view_of(splice, mutant)
        wt, mut = view.wt, view.mut
        changed = set(changed_features(view).tolist())
        real = rows[rows["control"] == "real"]
        assert set(real["feature"]) == changed
        active = ((wt.z > 0) | (mut.z > 0)).any(0)
        delta = (mut.pre - wt.pre).abs().sum(0)
        by_stability = sorted(torch.nonzero(active).flatten().tolist(), key=lambda j: (float(delta[j]), j))
        stable = rows[rows["control"] == "stable"]
        assert stable["feature"].tolist() == sorted(by_stability[:5])
        assert (stable["patched_value"] == stable["mut_latent"]).all()
        rnd = rows[rows["control"] == "random"]
        assert len(rnd) == len(real) and not set(rnd["feature"]) & changed
        for (_, r), (_, q) in zip(rnd.iterrows(), real.iterrows(), strict=True):
            raised = site_values(r["patched_value"]) - site_values(r["wt_latent"])
            size = np.abs(site_values(q["mut_latent"]) - site_values(q["wt_latent"]))
            assert raised == pytest.approx(size, abs=1e-6)  # raised by exactly that much, at every site


def test_informative_controls_move_the_score(splices):
    """Unlike the seed's stable control (0 of 282 demo rows nonzero), these can fail: they are not
    no-ops by construction. The random control moves the score in pre space too."""
    for space in ("latent", "pre"):
        table = patch_protein(splices[2], MUTANTS, patch_settings(space=space))
        for control in ("stable", "random"):
            moved = table[table["control"] == control].groupby("mutant")["effect"].apply(lambda e: (e != 0).any())
            assert moved.mean() >= 0.8, (space, control, moved)
        rnd = table[table["control"] == "random"]
        assert ((rnd["patched_value"] - rnd["wt_latent"]) > 0).all()  # a latent, raised, in both spaces


@pytest.mark.parametrize("space", ["latent", "pre"])
def test_top_delta_patches_the_n_largest_pre_changes(splices, space):
    splice = splices[3]
    for mutant in (MUTANTS[2], DOUBLE):
        table = patch_protein(splice, [mutant], patch_settings(features="top_delta", n=5, space=space))
        view = view_of(splice, mutant, space=space)
        top = torch.argsort((view.mut.pre - view.wt.pre).abs().sum(0), descending=True, stable=True)[:5]
        real = table[table["control"] == "real"]
        assert sorted(real["feature"]) == sorted(top.tolist())
        assert (real["patched_value"] == (real["mut_latent"] if space == "latent" else real["mut_pre"])).all()
        assert (table.loc[table["control"] == "noop", "effect"] == 0.0).all()
        rnd = table[table["control"] == "random"]
        assert len(rnd) == 5 and not set(rnd["feature"]) & (set(changed_features(view).tolist()) | set(top.tolist()))
        assert len(table[table["control"] == "stable"]) == 5


def test_settings_refused():
    with pytest.raises(InputError, match="patching.features"):
        patch_settings(features="everything")
    with pytest.raises(InputError, match="space"):
        patch_settings(space="post")


@pytest.mark.parametrize("layer", LAYERS)
def test_double_mutant_patches_both_sites(lm, splices, layer):
    """A double mutant: rows name both sites, the baseline is the sum-over-sites score, effects match fair-esm."""
    splice = splices[layer]
    double = parse_mutant("F2A:L41P", SEQ)
    table = patch_protein(splice, [double], patch_settings())
    assert (table["position"] == "2:41").all() and (table["mutant"] == "F2A:L41P").all()
    assert (table.loc[table["control"] == "noop", "effect"] == 0.0).all()
    expected = wt_marginal(lm, wt_log_probs(lm, SEQ), [double])[0]
    assert (table["baseline_score"] - expected).abs().max() <= 1e-5
    wt, mut = codes(splice, double)
    base = score_from_logits(hooked_logits(lm, SEQ, layer, {}), lm, double)
    for row in table[table["control"] == "real"].head(3).itertuples():
        z = wt.z.clone()
        z[:, row.feature] = mut.z[:, row.feature]  # the feature at its mutant value at both sites
        assert [float(v) for v in row.patched_value.split(":")] == pytest.approx(mut.z[:, row.feature].tolist())
        vecs = splice.sae.decode(z, wt.mu, wt.sigma) + wt.error
        ref = score_from_logits(hooked_logits(lm, SEQ, layer, {2: vecs[0], 41: vecs[1]}), lm, double) - base
        assert abs(row.effect - ref) <= 1e-5


# ---- hand-made views (tests/analysis_stubs.py): no model, a linear score, every number by hand ----------------

def by_control(p: Patches) -> dict[str, list[int]]:
    return {c: p.features[p.controls == c].tolist() for c in CONTROLS}


def test_changed_set_of_a_hand_made_two_site_mutant():
    """Changed at *any* site: f1 moves up at s1 and down at s2, f3 and f4 at s2 only → {1, 3, 4}. In pre
    space f5's pre-activation moves (s1 −2 → −1) but, re-TopK'd, the latents stay those of the WT; the
    chunks the candidates are tried in do not change the answer."""
    assert changed_features(two_site_view()).tolist() == [1, 3, 4]
    for chunk in (1, 3, 256):
        assert changed_features(two_site_view(space="pre"), chunk=chunk).tolist() == [1, 3, 4]


def test_plan_of_a_hand_made_two_site_mutant():
    """Worked from the tables in analysis_stubs: Σ_sites |Δpre| = [0, 2.5, 0, 1, 3.5, 1].

    * stable (stable_n 2): active features {0, 1, 3, 4} by Σ|Δpre| 0, 2.5, 1, 3.5 → {0, 3}. The mistakes
      give other sets: |Σ_sites Δpre| (f1 0.5) → {0, 1}; counting z ≥ 0 as active (f2 at 0) → {0, 2};
      active only above 1 (f0's largest latent is exactly 1) → {1, 3}; active in WT *and* mutant → {0, 1}.
    * random: outside the changed set {1, 3, 4} is {0, 2, 5}; three real patches take all three.
    """
    view = two_site_view()
    changed = changed_features(view)
    for seed in range(6):  # each seed draws all of {0, 2, 5}, once each
        plan = plan_patches(view, changed, patch_settings(stable_n=2), np.random.default_rng(seed))
        assert plan["real"].tolist() == plan["noop"].tolist() == [1, 3, 4]
        assert plan["stable"].tolist() == [0, 3]
        assert sorted(plan["random"].tolist()) == [0, 2, 5]
    rng = np.random.default_rng(0)
    assert plan_patches(view, changed, patch_settings(stable_n=3), rng)["stable"].tolist() == [0, 1, 3]
    assert plan_patches(view, changed, patch_settings(stable_n=10), rng)["stable"].tolist() == [0, 1, 3, 4]
    assert plan_patches(view, changed, patch_settings(stable_n=0), rng)["stable"].tolist() == []


def test_top_delta_plan_of_a_hand_made_two_site_mutant():
    """top_delta by Σ_sites |Δpre| = [0, 2.5, 0, 1, 3.5, 1]: n 2 → {1, 4} (|Σ_sites Δpre| would give {3, 4}).
    n 4 → {1, 3, 4, 5}, and f5 is not in the changed set: random draws only outside both, from {0, 2}, so
    2 rows (fewer than the 4 real ones), each raised by the |Δz| of the real patch in its row (f1, then f3)."""
    view = two_site_view()
    changed = changed_features(view)
    for seed in range(6):
        two = plan_patches(view, changed, patch_settings(features="top_delta", n=2), np.random.default_rng(seed))
        assert two["real"].tolist() == [1, 4] and set(two["random"].tolist()) <= {0, 2, 5}
        assert len(two["random"]) == 2
        four = plan_patches(view, changed, patch_settings(features="top_delta", n=4), np.random.default_rng(seed))
        assert four["real"].tolist() == [1, 3, 4, 5] and sorted(four["random"].tolist()) == [0, 2]
    p = patch_mutant(view, patch_settings(features="top_delta", n=4, seed=3))
    rnd = p.controls == "random"
    wt_z = torch.tensor(WT_Z).T.double().numpy()
    raised = p.per_site["patched_value"][rnd] - wt_z[p.features[rnd]]
    np.testing.assert_array_equal(raised, [[1.0, 1.5], [0.0, 2.0]])  # |Δz| of f1 (s1 +1, s2 −1.5), f3 (s2 −2)


def test_ties_in_stability_go_to_the_lower_feature():
    """24 features active at one site, Δpre 1 for even features and 0 for odd ones: the 5 most stable are the
    5 lowest odd features, 1 3 5 7 9, in index order among equals (a sort that is not stable breaks ties
    otherwise at this size)."""
    pre = [[float(j) + 1.0 for j in range(24)]]
    moved = [[float(j) + 1.0 + (j % 2 == 0) for j in range(24)]]
    view = stub_view("K2A", code(pre, positions=[2]), code(moved, positions=[2]), LinearEngine([[1.0] * 24], k=24))
    plan = plan_patches(view, changed_features(view), patch_settings(), np.random.default_rng(0))
    assert plan["stable"].tolist() == [1, 3, 5, 7, 9]
    # top_delta, the same ties the other way: the 5 largest |Δpre| are the 5 lowest even features.
    top = plan_patches(view, changed_features(view), patch_settings(features="top_delta", n=5),
                       np.random.default_rng(0))
    assert top["real"].tolist() == [0, 2, 4, 6, 8]


def test_active_means_a_positive_latent_in_the_wt_or_the_mutant():
    """One site, k 2: f0 active in the WT only (z 0.5), f1 in the mutant only (z 0.5), f2 in both (3), f3 in
    neither (z exactly 0, the bar). Σ|Δpre| = [1.5, 1.5, 0, 0.5]; stable_n 3 takes every active feature
    {0, 1, 2}. Active above 1 in the WT would drop f0, in the mutant f1; z ≥ 0 would let f3 (Δpre 0.5) in."""
    wt = code([[0.5, -1.0, 3.0, -2.0]], [[0.5, 0.0, 3.0, 0.0]], positions=[2])
    mut = code([[-1.0, 0.5, 3.0, -2.5]], [[0.0, 0.5, 3.0, 0.0]], positions=[2])
    view = stub_view("K2A", wt, mut, LinearEngine([[1.0] * 4], k=2))
    plan = plan_patches(view, changed_features(view), patch_settings(stable_n=3), np.random.default_rng(0))
    assert plan["stable"].tolist() == [0, 1, 2] and plan["real"].tolist() == [0, 1]


def test_a_mutant_that_moves_nothing_has_no_real_rows():
    """WT and mutant codes equal (pre space: no pre-activation moved, so nothing to try): no real, noop or
    random rows; the stable control still patches the active features, each to its own value, effect 0."""
    same = code([[0.5, 2.0, 3.0]], positions=[2])
    view = stub_view("K2A", same, same, LinearEngine([[1.0] * 3], k=3), space="pre")
    assert changed_features(view).tolist() == []
    p = patch_mutant(view, patch_settings(space="pre"))
    assert by_control(p) == {"real": [], "noop": [], "stable": [0, 1, 2], "random": []}
    assert p.effect.tolist() == [0.0, 0.0, 0.0]


def test_nothing_outside_the_changed_set_gives_no_random_rows():
    """Both features change (z 1, 2 → 2, 1): the pool for the random control is empty, so it has no rows."""
    view = stub_view("K2A", code([[1.0, 2.0]], positions=[2]), code([[2.0, 1.0]], positions=[2]),
                     LinearEngine([[1.0, 1.0]], k=2))
    p = patch_mutant(view, patch_settings())
    assert by_control(p) == {"real": [0, 1], "noop": [0, 1], "stable": [0, 1], "random": []}
    np.testing.assert_array_equal(p.effect, [1.0, -1.0, 0.0, 0.0, 1.0, -1.0])  # Δz_j · c_j with c = 1


def test_patches_of_a_hand_made_two_site_mutant():
    """Every row, worked by hand from analysis_stubs (latent space, stable_n 2, c as in WEIGHTS, S(m) = −2):
    real f1 f3 f4: effects −2, −6, 10; noop 0; stable f0 (Δz 0) 0, f3 −6; random row i raises a feature of
    {0, 2, 5} by real row i's |Δz| at each site, f1 (1, 1.5), f3 (0, 2), f4 (0, 2.5): effect c·raise."""
    p = patch_mutant(two_site_view(), patch_settings(stable_n=2, seed=1))
    assert p.mutant == "K2A:G6W" and p.position == "2:6"
    assert p.features.dtype == np.int64
    assert list(p.controls) == ["real"] * 3 + ["noop"] * 3 + ["stable"] * 2 + ["random"] * 3
    assert [p.count(c) for c in CONTROLS] == [3, 3, 2, 3]
    order = by_control(p)
    assert order["real"] == order["noop"] == [1, 3, 4] and order["stable"] == [0, 3]
    assert sorted(order["random"]) == [0, 2, 5]
    c, f = np.array(WEIGHTS), p.features
    sizes = np.array([[1.0, 1.5], [0.0, 2.0], [0.0, 2.5]])
    random_effects = (c.T[f[-3:]] * sizes).sum(1)
    np.testing.assert_array_equal(p.effect, [-2.0, -6.0, 10.0, 0.0, 0.0, 0.0, 0.0, -6.0, *random_effects])
    np.testing.assert_array_equal(p.baseline, np.full(11, BASE))
    np.testing.assert_array_equal(p.patched, BASE + p.effect)
    for name, table in (("wt_pre", WT_PRE), ("mut_pre", MUT_PRE), ("wt_latent", WT_Z), ("mut_latent", MUT_Z)):
        np.testing.assert_array_equal(p.per_site[name], np.array(table).T[f], err_msg=name)
    wt, mut = np.array(WT_Z).T[f], np.array(MUT_Z).T[f]
    expected = np.concatenate([mut[:3], wt[3:6], mut[6:8], wt[8:] + sizes])
    np.testing.assert_array_equal(p.per_site["patched_value"], expected)
    assert all(v.dtype == np.float64 for v in (p.baseline, p.patched, p.effect, *p.per_site.values()))


def test_pre_space_patches_of_a_hand_made_two_site_mutant():
    """Pre space: rows write pre and TopK runs again. Real f1 (−2, as in latent space); f3's pre 2 → 1 at s2
    leaves it in the top 2 at 1: Δz −1, effect 3·(−1) = −3; f4's pre −1 → 2.5 pushes f3 out (Δz −2) and
    enters at 2.5: 3·(−2) + 4·2.5 = 4. Stable f0 0, f3 −3. Random rows write latents, as in latent space."""
    p = patch_mutant(two_site_view(space="pre"), patch_settings(stable_n=2, space="pre", seed=1))
    f = p.features
    sizes = np.array([[1.0, 1.5], [0.0, 2.0], [0.0, 2.5]])
    random_effects = (np.array(WEIGHTS).T[f[-3:]] * sizes).sum(1)
    np.testing.assert_array_equal(p.effect, [-2.0, -3.0, 4.0, 0.0, 0.0, 0.0, 0.0, -3.0, *random_effects])
    pre_wt, pre_mut = np.array(WT_PRE).T[f], np.array(MUT_PRE).T[f]
    expected = np.concatenate([pre_mut[:3], pre_wt[3:6], pre_mut[6:8], np.array(WT_Z).T[f[8:]] + sizes])
    np.testing.assert_array_equal(p.per_site["patched_value"], expected)


def test_random_stream_is_fixed_by_seed_protein_layer_and_mutant():
    draw = lambda *key: mutant_rng(*key).integers(0, 2**62, size=4).tolist()  # noqa: E731
    first = draw(0, "P", 1, "A1C")
    assert draw(0, "P", 1, "A1C") == first
    for other in ((1, "P", 1, "A1C"), (0, "Q", 1, "A1C"), (0, "P", 2, "A1C"), (0, "P", 1, "A1D")):
        assert draw(*other) != first, other


def test_table_rows_and_cells_of_hand_made_patches(tmp_path, caplog):
    """One single-site and one two-site mutant: numbers for one site, 'a:b' (repr, round-tripping) for two;
    the settings in every row; a fresh 0.. index; the file reads back equal."""
    one = Patches(mutant="K2A", position="2", features=np.array([4, 1]), controls=np.array(["real", "noop"]),
                  per_site={k: np.array([[0.5], [0.25]]) + i for i, k in reversed(list(enumerate(
                      ("wt_pre", "mut_pre", "wt_latent", "mut_latent", "patched_value"))))},  # any key order
                  baseline=np.array([-2.0, -2.0]), patched=np.array([-1.5, -2.0]), effect=np.array([0.5, 0.0]))
    two = Patches(mutant="K2A:G6W", position="2:6", features=np.array([3]), controls=np.array(["stable"]),
                  per_site={k: np.array([[0.1, -3.0]]) for k in ("wt_pre", "mut_pre", "wt_latent", "mut_latent",
                                                                 "patched_value")},
                  baseline=np.array([-1.0]), patched=np.array([-0.75]), effect=np.array([0.25]))
    table = patches_frame([one, two], layer=3, k=8, d_sae=96, space="pre", activations="fair-esm")
    assert list(table.columns) == PATCH_COLUMNS and table.index.tolist() == [0, 1, 2]
    assert table["mutant"].tolist() == ["K2A", "K2A", "K2A:G6W"] and table["position"].tolist() == ["2", "2", "2:6"]
    assert table["feature"].tolist() == [4, 1, 3] and table["control"].tolist() == ["real", "noop", "stable"]
    assert table["wt_pre"].tolist() == [0.5, 0.25, "0.1:-3.0"]
    assert table["mut_pre"].tolist()[:2] == [1.5, 1.25] and table["patched_value"].tolist()[:2] == [4.5, 4.25]
    assert table["wt_latent"].tolist()[:2] == [2.5, 2.25] and table["mut_latent"].tolist()[:2] == [3.5, 3.25]
    assert table["effect"].tolist() == [0.5, 0.0, 0.25] and table["patched_score"].tolist() == [-1.5, -2.0, -0.75]
    assert table["baseline_score"].tolist() == [-2.0, -2.0, -1.0]
    assert table[["layer", "k", "d_sae", "space", "activations"]].values.tolist() == [[3, 8, 96, "pre", "fair-esm"]] * 3
    empty = patches_frame([], layer=3, k=8, d_sae=96, space="latent", activations="interprot")
    assert list(empty.columns) == PATCH_COLUMNS and len(empty) == 0
    # Rule patch_features writes it to its output `table`; what is read back is what was written.
    assert PATCHING.rule == "patch_features" and runs_analysis("patch_features", "PATCHING")
    assert "table=" in rule_block("patch_features")
    with caplog.at_level(logging.INFO, logger="esmsae.analyses.patching"):
        write_patches([one, two], {"table": tmp_path / "t.csv"}, patch_settings(space="pre", features="top_delta"),
                      LayerMeta(protein="P", layer=3, k=8, d_sae=96, activations="fair-esm"))
    assert [r.getMessage() for r in caplog.records if r.name == "esmsae.analyses.patching"] == [
        "P L3: 2 mutants, 3 rows (space pre, features top_delta)"]  # the job's log: 2 results, 2 + 1 rows
    back = read_table(tmp_path / "t.csv", "patching")
    sites = ["wt_pre", "mut_pre", "wt_latent", "mut_latent", "patched_value"]
    pd.testing.assert_frame_equal(back.drop(columns=sites), table.drop(columns=sites), check_dtype=False)
    for name in sites:  # a column mixing one-site and two-site mutants reads back as text
        assert [site_values(v).tolist() for v in back[name]] == [site_values(v).tolist() for v in table[name]]


def test_summary_line():
    """The log line: the real rows' count and largest |effect|, each control's count; 0 when nothing is real."""
    p = Patches(mutant="K2A", position="2", features=np.array([1, 2, 1, 2, 5, 7, 8]),
                controls=np.array(["real", "real", "noop", "noop", "stable", "random", "random"]),
                per_site={}, baseline=np.zeros(7), patched=np.zeros(7),
                effect=np.array([0.5, -2.0, 0.0, 0.0, 9.0, -9.0, 3.0]))
    assert summary(p) == "2 real patches (noop 2, stable 1, random 2), max |effect| 2"
    none = Patches(mutant="K2A", position="2", features=np.array([4]), controls=np.array(["stable"]), per_site={},
                   baseline=np.zeros(1), patched=np.zeros(1), effect=np.array([0.5]))
    assert summary(none) == "0 real patches (noop 0, stable 1, random 0), max |effect| 0"
    assert PATCHING.summary is summary and PATCHING.run is patch_mutant and PATCHING.write is write_patches


def test_patch_protein_resumes_from_its_work_folder(splices, tmp_path):
    """A mutant's piece already in the job's work folder is used as it is, not recomputed; the table records
    the splice's layer, the SAE's k and d_sae and the space."""
    work = WorkFolder(tmp_path / "P_L1.csv", "key")
    planted = Patches(mutant=MUTANTS[0].name, position="2", features=np.array([5]), controls=np.array(["real"]),
                      per_site={k: np.array([[0.25]]) for k in ("wt_pre", "mut_pre", "wt_latent", "mut_latent",
                                                                "patched_value")},
                      baseline=np.array([-1.0]), patched=np.array([-0.5]), effect=np.array([0.5]))
    work.save(0, MUTANTS[0].name, planted)
    table = patch_protein(splices[1], MUTANTS[:1], patch_settings(space="pre"), work=work)
    assert table["feature"].tolist() == [5] and table["effect"].tolist() == [0.5]
    assert table[["layer", "k", "d_sae", "space"]].values.tolist() == [[1, 8, 96, "pre"]]
