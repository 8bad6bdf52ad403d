"""Activation patching: exact controls, exact feature sets, agreement with fair-esm's forward."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from esmsae.errors import InputError
from esmsae.mutations import parse_mutant
from esmsae.patching import (
    CONTROLS,
    PATCH_COLUMNS,
    changed_features,
    patch_protein,
    single_feature_patches,
)
from esmsae.scoring import wt_log_probs, wt_marginal

from .conftest import LAYERS, WT, patch_settings, splice_every_layer, view_of
from .reference import hooked_logits, score_from_logits

SEQ = WT["EPHB2_HUMAN"]
MUTANTS = [parse_mutant(t, SEQ) for t in ("F2A", "W8R", "M14K", "L41P", "M61E")]


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


@pytest.mark.parametrize("layer", LAYERS)
def test_pre_space_changed_set_is_exact(splices, layer):
    """Brute force: set each feature's pre-activation alone, re-TopK, compare with z_wt."""
    splice = splices[layer]
    for mutant in MUTANTS:
        wt, mut = codes(splice, mutant)
        expected = []
        for j in range(wt.pre.shape[-1]):
            pre = wt.pre.clone()
            pre[:, j] = mut.pre[:, j]
            if not torch.equal(splice.sae.topk(pre), wt.z):
                expected.append(j)
        assert changed_features(view_of(splice, mutant, space="pre")).tolist() == expected


def test_controls_are_seeded_and_random_avoids_changed(splices):
    splice = splices[2]
    one = patch_protein(splice, MUTANTS, patch_settings(seed=7))
    two = patch_protein(splice, MUTANTS, patch_settings(seed=7))
    other = patch_protein(splice, MUTANTS, patch_settings(seed=8))
    pd.testing.assert_frame_equal(one, two)
    assert not one[one["control"] == "random"]["feature"].equals(other[other["control"] == "random"]["feature"])
    for mutant in MUTANTS:
        rows = one[one["mutant"] == mutant.name]
        real = set(rows.loc[rows["control"] == "real", "feature"])
        wt, mut = codes(splice, mutant)
        changed = set(changed_features(view_of(splice, mutant)).tolist())
        assert real == changed
        assert not set(rows.loc[rows["control"] == "random", "feature"]) & changed
        stable = rows[rows["control"] == "stable"]
        assert len(stable) == len(real) and not set(stable["feature"]) & changed
        # stable = the smallest |Δpre| outside the changed set
        delta = (mut.pre - wt.pre).abs()[0]
        outside = sorted(set(range(delta.shape[0])) - changed, key=lambda j: (float(delta[j]), j))
        assert sorted(stable["feature"]) == sorted(outside[: len(real)])
        # random moves by the real patches' magnitudes
        rnd = rows[rows["control"] == "random"]
        moved = (rnd["patched_value"] - rnd["wt_latent"]).abs().to_numpy()
        real_rows = rows[rows["control"] == "real"]
        sizes = (real_rows["mut_latent"] - real_rows["wt_latent"]).abs().to_numpy()
        assert moved == pytest.approx(sizes[: len(moved)], abs=1e-6)


def test_top_delta_patches_the_n_largest_pre_changes(splices):
    splice = splices[3]
    mutant = MUTANTS[2]
    table = patch_protein(splice, [mutant], patch_settings(features="top_delta", n=5))
    wt, mut = codes(splice, mutant)
    top = torch.argsort((mut.pre - wt.pre).abs()[0], descending=True)[:5]
    real = table[table["control"] == "real"]
    assert sorted(real["feature"]) == sorted(top.tolist())
    assert (table.loc[table["control"] == "noop", "effect"] == 0.0).all()


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
