"""Integrated gradients with an error node, and minimal circuits, on a tiny model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from esmsae.arrays import Attributions
from esmsae.circuits import circuit_curve, sizes_table, top_k_patches
from esmsae.engine import Splice
from esmsae.errors import InputError
from esmsae.esm import EsmLM
from esmsae.ig import attribute, attribute_protein, attributions_file, top_features
from esmsae.mutations import parse_mutant
from esmsae.patching import changed_features, patch_protein

from .conftest import (
    LAYERS,
    WT,
    circuit_settings,
    ig_settings,
    mutant_states,
    patch_settings,
    splice_every_layer,
    view_of,
)
from .reference import hooked_logits, score_from_logits

SEQ = WT["DNJA1_HUMAN"]
MUTANTS = [parse_mutant(t, SEQ) for t in ("Y3A", "L7P", "K20E", "F41S", "G64W")]


@pytest.fixture(scope="module")
def splices(lm, saes):
    return splice_every_layer(lm, saes, SEQ)


@pytest.mark.parametrize("layer", LAYERS)
def test_latent_completeness_within_one_percent(splices, layer):
    results = attribute_protein(splices[layer], MUTANTS, ig_settings(steps=16))
    errors = [r.completeness_error for r in results]
    assert np.median(errors) <= 0.01
    for r in results:  # summed attributions plus the error node give the total effect
        assert abs(float(r.attribution.sum()) + r.error_attribution - r.total_effect) <= 1e-4 + 0.01 * abs(
            r.total_effect)


def test_completeness_error_falls_with_steps(tiny_dir, saes):
    """In float64 the quadrature error is visible above rounding: it falls as steps grow."""
    from esmsae.esm import load_esm

    lm64 = EsmLM(load_esm(tiny_dir / "esm2_tiny.pt").double(), "cpu")
    splice = Splice(lm64, copy.deepcopy(saes[2]).double(), SEQ, 2)
    for mutant in MUTANTS[:3]:
        h = mutant_states(splice, mutant)
        errors = [attribute(view_of(splice, mutant, h), ig_settings(steps=s)).completeness_error for s in (1, 2, 4)]
        assert errors[0] > errors[1] > errors[2] or errors[0] > 100 * max(errors[2], 1e-6)
        assert errors[2] <= 1e-4


@pytest.mark.parametrize("layer", LAYERS)
def test_total_effect_equals_mutant_representation_spliced_in(lm, splices, layer):
    splice = splices[layer]
    for mutant in MUTANTS[:3]:
        h = mutant_states(splice, mutant)
        pos = mutant.sites[0].pos
        base = score_from_logits(hooked_logits(lm, SEQ, layer, {}), lm, mutant)
        direct = score_from_logits(hooked_logits(lm, SEQ, layer, {pos: h[0]}), lm, mutant) - base
        with_error = attribute(view_of(splice, mutant, h), ig_settings(steps=4))
        assert abs(with_error.total_effect - direct) <= 1e-5
        # Without the error node (the seed) the end point is (z_mut, e_wt).
        wt = splice.wt_code([pos])
        mut = splice.mutant_code(h, wt)
        vec = splice.sae.decode(mut.z[0], wt.mu[0], wt.sigma[0]) + wt.error[0]
        seed_total = score_from_logits(hooked_logits(lm, SEQ, layer, {pos: vec}), lm, mutant) - base
        without = attribute(view_of(splice, mutant, h), ig_settings(steps=16, error_node=False))
        assert without.error_attribution == 0.0
        assert abs(without.total_effect - seed_total) <= 1e-5
        assert without.completeness_error <= 0.01 or abs(without.total_effect) < 1e-4


@pytest.mark.parametrize("rule,steps", [("gausslegendre", 3), ("riemann_right", 5), ("riemann_middle", 7)])
def test_linear_stand_in_gives_the_analytic_attribution(lm, saes, rule, steps):
    """Replace the rest of the network by S = ⟨Δh, w⟩: A_j = Δz_j σ (w_dec_j · w), A_err = ⟨ẽ − e, w⟩."""
    splice = Splice(lm, saes[3], SEQ, 3)
    w = torch.linspace(-1.0, 1.0, lm.embed_dim)
    splice.run = lambda positions, delta, spec: (delta * w).sum((1, 2))
    for mutant in (MUTANTS[1], parse_mutant("Y3A:F41S", SEQ)):
        h = mutant_states(splice, mutant)
        wt = splice.wt_code([s.pos for s in mutant.sites])
        mut = splice.mutant_code(h, wt)
        result = attribute(view_of(splice, mutant, h), ig_settings(steps=steps, rule=rule))
        expected = ((mut.z - wt.z) * wt.sigma * (splice.sae.w_dec @ w)).sum(0)
        assert torch.allclose(result.attribution, expected, atol=1e-5)
        assert result.error_attribution == pytest.approx(float(((mut.error - wt.error) * w).sum()), abs=1e-5)
        assert result.completeness_error <= 1e-4


def test_captum_trapezoid_is_still_biased():
    """Why riemann_trapezoid is refused; when this fails, captum fixed it and the rule can come back."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, _ = approximation_parameters("riemann_trapezoid")
    assert sum(step_sizes(5)) == pytest.approx(0.8)
    with pytest.raises(InputError, match="biased"):
        ig_settings(rule="riemann_trapezoid")


def test_pre_space_runs_and_reports_larger_error(splices):
    splice = splices[2]
    latent = [r.completeness_error for r in attribute_protein(splice, MUTANTS, ig_settings(steps=16))]
    pre = [r.completeness_error for r in attribute_protein(splice, MUTANTS, ig_settings(steps=16, space="pre"))]
    assert np.isfinite(pre).all() and np.median(pre) > np.median(latent)


def test_settings_refused():
    with pytest.raises(InputError, match="ig.rule"):
        ig_settings(rule="simpson")
    with pytest.raises(InputError, match="ig.steps"):
        ig_settings(steps=1, rule="riemann_middle")
    with pytest.raises(InputError, match="circuits.recover"):
        circuit_settings(recover=1.5)


def test_npz_and_top_table_round_trip(splices, tmp_path):
    results = attribute_protein(splices[1], MUTANTS[:2], ig_settings(steps=4))
    path = tmp_path / "P_L1.npz"
    attributions_file(results, settings=ig_settings(steps=4), k=8, d_sae=96, layer=1).write(path)
    data = Attributions.read(path)
    assert data.mutant.tolist() == [m.name for m in MUTANTS[:2]]
    assert data.attribution.shape == (2, 96)
    assert np.array_equal(data.attribution[1], results[1].attribution.numpy())
    assert (data.steps, data.rule, data.error_node, data.space, data.k, data.layer) == (
        4, "gausslegendre", True, "latent", 8, 1)
    # Read back through the same type: a file that is not one is refused by name.
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(InputError, match="bad.npz: not a readable IG results file"):
        Attributions.read(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", mutant=np.array(["A1C"]), attribution=np.zeros((2, 3)),
             error_attribution=np.zeros(2), total_effect=np.zeros(2), completeness_error=np.zeros(2))
    with pytest.raises(InputError, match="short.npz: mutant has shape"):
        Attributions.read(tmp_path / "short.npz")
    top = top_features(results, n=5)
    first = top[top["mutant"] == MUTANTS[0].name]
    assert first["rank"].tolist() == [1, 2, 3, 4, 5]
    assert first["attribution"].abs().is_monotonic_decreasing
    assert first["attribution"].abs().iloc[0] == pytest.approx(float(results[0].attribution.abs().max()))


@pytest.mark.parametrize("layer", LAYERS)
def test_circuit_curve_end_points_are_exact(splices, layer):
    splice = splices[layer]
    for mutant in MUTANTS:
        h = mutant_states(splice, mutant)
        ig = attribute(view_of(splice, mutant, h), ig_settings(steps=8))
        n_changed = len(changed_features(view_of(splice, mutant, h)))
        curve = circuit_curve(view_of(splice, mutant, h), circuit_settings(max_k=40), ig.attribution)
        assert curve.k.tolist() == list(range(41))
        if curve.total_effect == 0.0:
            continue
        assert curve.recovered_fraction[0] == 0.0
        assert curve.recovered_fraction[n_changed] == 1.0  # every changed feature in: z' = z_mut exactly
        reached = np.nonzero(curve.recovered_fraction >= 0.9)[0]
        assert curve.minimal_k == reached[0]


def test_circuit_k1_equals_the_single_feature_patch(splices):
    splice = splices[2]
    mutant = MUTANTS[1]
    h = mutant_states(splice, mutant)
    ig = attribute(view_of(splice, mutant, h), ig_settings(steps=8))
    curve = circuit_curve(view_of(splice, mutant, h), circuit_settings(max_k=3), ig.attribution)
    top = int(torch.argmax(ig.attribution.abs()))
    table = patch_protein(splice, [mutant], patch_settings())
    row = table[(table["control"] == "real") & (table["feature"] == top)]
    assert len(row) == 1
    assert abs(curve.patched_score[1] - float(row["patched_score"].iloc[0])) <= 1e-5
    sizes = sizes_table("DNJA1_HUMAN", 2, [curve])
    assert list(sizes.columns) == ["protein", "layer", "mutant", "total_effect", "minimal_k"]


def test_top_k_patches_orders_by_absolute_attribution():
    start, end = torch.zeros(1, 4), torch.ones(1, 4)
    rows = top_k_patches(start, end, torch.tensor([0.1, -3.0, 2.0, 0.0]), max_k=3)
    assert rows[:, 0].tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]]
