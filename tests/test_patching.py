"""Activation patching: exact controls, exact feature sets, agreement with fair-esm's forward."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.patching import changed_features, patch_protein, single_feature_patches
from esmsae.analyses.scoring import wt_log_probs, wt_marginal
from esmsae.inputs.mutations import parse_mutant
from esmsae.pipeline.columns import CONTROLS, PATCH_COLUMNS
from esmsae.pipeline.errors import InputError

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
