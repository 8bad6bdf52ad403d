"""Integrated gradients with an error node, and minimal circuits, on a tiny model."""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.api import LayerMeta
from esmsae.analyses.arrays import Attributions
from esmsae.analyses.ig import (
    IG,
    Attribution,
    attribute,
    attribute_protein,
    attributions_file,
    completeness_error,
    summary,
    write_attributions,
)
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.esm import EsmLM
from esmsae.model.splice import Splice
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.resume import WorkFolder
from esmsae.tables.ig import tabulate_top_features

from .analysis_stubs import rule_block, runs_analysis, two_site_view
from .conftest import (
    LAYERS,
    WT,
    circuit_settings,
    circuit_size_settings,
    ig_settings,
    mutant_states,
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
    from esmsae.model.esm import load_esm

    lm64 = EsmLM(load_esm(tiny_dir / "esm2_tiny.pt").double(), "cpu", activations="fair-esm")
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


@pytest.mark.parametrize("error_node", [True, False])
@pytest.mark.parametrize("rule,steps", [("gausslegendre", 3), ("riemann_right", 5), ("riemann_middle", 7)])
def test_linear_stand_in_gives_the_analytic_attribution(lm, saes, rule, steps, error_node):
    """Replace the rest of the network by S = ⟨Δh, w⟩: A_j = Δz_j σ (w_dec_j · w), A_err = ⟨ẽ − e, w⟩;
    without the error node (the seed), A_j is the same, A_err = 0 and T = Σ_j A_j (the error stays at WT)."""
    splice = Splice(lm, saes[3], SEQ, 3)
    w = torch.linspace(-1.0, 1.0, lm.embed_dim)
    splice.run = lambda positions, delta, spec: (delta * w).sum((1, 2))
    for mutant in (MUTANTS[1], parse_mutant("Y3A:F41S", SEQ)):
        h = mutant_states(splice, mutant)
        wt = splice.wt_code([s.pos for s in mutant.sites])
        mut = splice.mutant_code(h, wt)
        result = attribute(view_of(splice, mutant, h), ig_settings(steps=steps, rule=rule, error_node=error_node))
        expected = ((mut.z - wt.z) * wt.sigma * (splice.sae.w_dec @ w)).sum(0)
        assert torch.allclose(result.attribution, expected, atol=1e-5)
        error = float(((mut.error - wt.error) * w).sum())
        if error_node:
            assert result.error_attribution == pytest.approx(error, abs=1e-5)
            assert result.total_effect == pytest.approx(float(expected.sum()) + error, abs=1e-5)
        else:
            assert result.error_attribution == 0.0 and abs(error) > 1e-3
            assert result.total_effect == pytest.approx(float(expected.sum()), abs=1e-5)
        assert result.completeness_error <= 1e-4


def test_pre_space_ig_is_a_quadrature_of_autograd_gradients(splices):
    """In pre space the path runs over pre-activations with TopK inside: captum's midpoint rule equals
    the same sum written out by hand, node by node, with autograd gradients."""
    splice, steps = splices[2], 6
    for mutant in (MUTANTS[1], parse_mutant("Y3A:F41S", SEQ)):
        view = view_of(splice, mutant, space="pre")
        result = attribute(view, ig_settings(space="pre", steps=steps, rule="riemann_middle"))
        start, end, de = view.start, view.end, view.error_change
        grad_v, grad_e = torch.zeros_like(start), torch.zeros_like(de)
        for i in range(steps):
            alpha = (i + 0.5) / steps
            v = (start + alpha * (end - start)).unsqueeze(0).requires_grad_(True)
            e = (alpha * de).unsqueeze(0).requires_grad_(True)
            score = splice.run(view.wt.positions, splice.delta(view.wt, splice.sae.topk(v), e), view.spec)
            gv, ge = torch.autograd.grad(score.sum(), (v, e))
            grad_v, grad_e = grad_v + gv[0] / steps, grad_e + ge[0] / steps
        expected = ((end - start) * grad_v).sum(0)
        assert bool((expected != 0).any())
        assert torch.allclose(result.attribution, expected, atol=1e-5, rtol=1e-4)
        assert result.error_attribution == pytest.approx(float((de * grad_e).sum()), abs=1e-5)
        assert bool((result.attribution[(end == start).all(0)] == 0).all())  # a feature that does not move


def test_completeness_error_definition():
    """|ΣA + A_err − T| / max(|T|, 1e-6), by hand."""
    assert completeness_error(0.49, 0.01, 0.4) == pytest.approx(0.25)  # 0.1 / 0.4, not 0.1 / 1
    assert completeness_error(1.5, 0.5, 2.0) == 0.0
    assert completeness_error(0.5, 0.0, 1e-9) == pytest.approx(0.5 / 1e-6)
    assert completeness_error(-1.0, 0.0, -2.0) == pytest.approx(0.5)


@pytest.mark.parametrize("layer", LAYERS)
def test_reported_completeness_error_is_relative_to_the_total_effect(splices, layer):
    results = attribute_protein(splices[layer], MUTANTS, ig_settings(steps=4))
    small = 0
    for r in results:
        gap = abs(float(r.attribution.sum()) + r.error_attribution - r.total_effect)
        assert r.completeness_error == pytest.approx(gap / max(abs(r.total_effect), 1e-6), rel=1e-9)
        small += abs(r.total_effect) < 0.5
    assert small > 0  # effects below 1 are where a wrong denominator would show


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
    with pytest.raises(InputError, match="circuits.max_k"):
        circuit_settings(max_k=0)
    with pytest.raises(InputError, match="circuits.recover"):
        circuit_size_settings(recover=1.5)
    with pytest.raises(InputError, match="circuits.min_effect"):
        circuit_size_settings(min_effect=-0.1)


def test_npz_and_top_table_round_trip(splices, tmp_path):
    results = attribute_protein(splices[1], MUTANTS[:2], ig_settings(steps=4))
    path = tmp_path / "P_L1.npz"
    attributions_file(results, steps=4, rule="gausslegendre", space="latent", error_node=True, k=8, d_sae=96,
                      layer=1, activations="fair-esm").write(path)
    data = Attributions.read(path)
    assert data.mutant.tolist() == [m.name for m in MUTANTS[:2]]
    assert data.attribution.shape == (2, 96)
    assert np.array_equal(data.attribution[1], results[1].attribution.numpy())
    assert (data.steps, data.rule, data.error_node, data.space, data.k, data.d_sae, data.layer, data.activations) == (
        4, "gausslegendre", True, "latent", 8, 96, 1, "fair-esm")
    assert np.array_equal(data.abs_delta[0], results[0].abs_delta.numpy())
    # Read back through the same type: a file that is not one is refused by name.
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(InputError, match="bad.npz: not a readable IG results file"):
        Attributions.read(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", mutant=np.array(["A1C"]), attribution=np.zeros((2, 3)),
             abs_delta=np.zeros((2, 3)), error_attribution=np.zeros(2), total_effect=np.zeros(2),
             completeness_error=np.zeros(2))
    with pytest.raises(InputError, match="short.npz: mutant has shape"):
        Attributions.read(tmp_path / "short.npz")
    # The top-feature table, read from the file as its rule does, with each feature's label.
    pd.DataFrame({"layer": 1, "feature": np.arange(96), "label": [f"f{j}" for j in range(96)]}).reindex(
        columns=TABLES["feature_labels"]).to_csv(tmp_path / "labels.csv", index=False)
    tabulate_top_features(path, tmp_path / "labels.csv", tmp_path / "top.csv")
    top = read_table(tmp_path / "top.csv", "ig_top")
    assert (top[["layer", "k", "d_sae", "space", "activations"]].drop_duplicates().values.tolist() == [
        [1, 8, 96, "latent", "fair-esm"]])
    assert (top["label"] == "f" + top["feature"].astype(str)).all()
    first = top[top["mutant"] == MUTANTS[0].name]
    n_nonzero = int((results[0].attribution != 0).sum())  # A_j = 0 (features that did not move) never listed
    assert first["rank"].tolist() == list(range(1, min(20, n_nonzero) + 1))
    assert first["attribution"].abs().is_monotonic_decreasing
    assert first["attribution"].abs().iloc[0] == pytest.approx(float(results[0].attribution.abs().max()))


# ---- hand-made views (tests/analysis_stubs.py): no model, a linear score, every number by hand ----------------

@pytest.mark.parametrize("rule,steps", [("gausslegendre", 2), ("riemann_middle", 3)])
def test_attribution_of_a_hand_made_two_site_mutant(rule, steps):
    """Linear score, so any rule is exact: A_j = Σ_sites c_sj Δz_sj = f1 4·1 + 4·(−1.5) = −2 (+4 at s1, −6 at s2),
    f3 −6, f4 10, else 0; A_err = ⟨ẽ − e, w⟩ = 1·2 + (−1)·3 = −1; T = 2 − 1 = 1; completeness error 0.
    abs_delta = Σ_sites |Δz| = [0, 2.5, 0, 2, 2.5, 0]: f1 moves +1 at s1 and −1.5 at s2 (|Σ_sites Δz| would be 0.5).
    captum's own delta Σ A + A_err − (S(end) − S(start)) is 0."""
    r = attribute(two_site_view(), ig_settings(steps=steps, rule=rule))
    assert r.mutant == "K2A:G6W"
    assert r.attribution.tolist() == pytest.approx([0.0, -2.0, 0.0, -6.0, 10.0, 0.0], abs=1e-5)
    assert r.abs_delta.tolist() == [0.0, 2.5, 0.0, 2.0, 2.5, 0.0]
    assert r.error_attribution == pytest.approx(-1.0, abs=1e-5)
    assert r.total_effect == 1.0
    assert r.completeness_error == pytest.approx(0.0, abs=1e-5) and abs(r.quadrature_delta) <= 1e-5
    # Without the error node (the seed): the error stays at WT, A_err = 0 and T = S(z_mut, e_wt) − S(m) = 2.
    seed = attribute(two_site_view(), ig_settings(steps=steps, rule=rule, error_node=False))
    assert seed.attribution.tolist() == pytest.approx([0.0, -2.0, 0.0, -6.0, 10.0, 0.0], abs=1e-5)
    assert seed.error_attribution == 0.0 and seed.total_effect == 2.0
    assert seed.completeness_error == pytest.approx(0.0, abs=1e-5) and abs(seed.quadrature_delta) <= 1e-5


def test_pre_space_attribution_of_a_hand_made_two_site_mutant():
    """Pre space, midpoint rule, 4 steps (α = 1/8, 3/8, 5/8, 7/8), TopK (k 2) inside the path. At s2,
    pre(α) = [0.75, 3 − 1.5α, 0.25, 2 − α, −1 + 3.5α, 0]: f3 is in the top 2 while 2 − α > −1 + 3.5α
    (α < 2/3: 3 of the 4 points), f4 after (1 point); f1 always is, at both sites; f5 (s1 −2 + α) never.
    ∂S/∂pre_j = c_j where j is kept, so A_f1 = 1·4 + (−1.5)·4 = −2, A_f3 = −1·3·3/4 = −2.25,
    A_f4 = 3.5·4·1/4 = 3.5; A_err = −1 and T = 1 as in latent space; completeness |−2 − 2.25 + 3.5 − 1 − 1| / 1
    = 2.75 (pre space degrades it, METHOD.md). Another rule or step count puts the points elsewhere
    (Gauss–Legendre's 4 points: 2 of them before 2/3)."""
    r = attribute(two_site_view(space="pre"), ig_settings(space="pre", steps=4, rule="riemann_middle"))
    assert r.attribution.tolist() == pytest.approx([0.0, -2.0, 0.0, -2.25, 3.5, 0.0], abs=1e-5)
    assert r.abs_delta.tolist() == [0.0, 2.5, 0.0, 1.0, 3.5, 1.0]  # Σ_sites |Δpre|
    assert r.error_attribution == pytest.approx(-1.0, abs=1e-5) and r.total_effect == 1.0
    assert r.completeness_error == pytest.approx(2.75, abs=1e-5)


def test_completeness_error_at_its_floor():
    """The denominator is max(|T|, 1e-6): at |T| = 1e-6 exactly (the gap equal to it, ratio exactly 1) the two
    agree; above it |T| counts, below it (T = 0, T = −1e-9) the floor does; a negative T is divided by |T|."""
    assert completeness_error(0.0, 0.0, 1e-6) == 1.0 and completeness_error(0.0, 0.0, -1e-6) == 1.0
    assert completeness_error(0.5, 0.0, 0.0) == 0.5 / 1e-6
    assert completeness_error(0.5, 0.0, -1e-9) == pytest.approx(0.5 / 1e-6, rel=1e-6)
    assert completeness_error(0.0, 0.0, 2e-6) == 1.0  # |T| above the floor: 2e-6 / 2e-6
    assert completeness_error(0.25, 0.25, -0.5) == 2.0  # |0.5 + 0.5| / 0.5
    assert completeness_error(-0.25, -0.5, -0.5) == 0.5  # |−0.75 + 0.5| / 0.5: signs kept inside the sum


def hand_result(name, a, err=0.5, total=2.0, completeness=0.25):
    return Attribution(mutant=name, attribution=torch.tensor(a), abs_delta=torch.tensor([abs(v) for v in a]),
                       error_attribution=err, total_effect=total, completeness_error=completeness,
                       quadrature_delta=-0.125)


def test_results_file_of_hand_made_results(tmp_path):
    """Two results → (2, d_sae) arrays in mutant order, the settings recorded; none → (0, d_sae), still readable.
    Rule integrate_gradients writes it to its output `npz`."""
    results = [hand_result("K2A", [0.5, -1.0, 0.0]), hand_result("G6W", [2.0, 0.0, 0.25], err=-0.5, total=1.0)]
    assert IG.rule == "integrate_gradients" and runs_analysis("integrate_gradients", "IG")
    assert "npz=" in rule_block("integrate_gradients")
    meta = LayerMeta(protein="P", layer=3, k=8, d_sae=3, activations="fair-esm")
    write_attributions(results, {"npz": tmp_path / "a.npz"}, ig_settings(steps=5, rule="riemann_middle"), meta)
    data = Attributions.read(tmp_path / "a.npz")
    assert data.mutant.tolist() == ["K2A", "G6W"]
    np.testing.assert_array_equal(data.attribution, [[0.5, -1.0, 0.0], [2.0, 0.0, 0.25]])
    np.testing.assert_array_equal(data.abs_delta, [[0.5, 1.0, 0.0], [2.0, 0.0, 0.25]])
    assert data.attribution.dtype == data.abs_delta.dtype == np.float64
    assert data.error_attribution.tolist() == [0.5, -0.5] and data.total_effect.tolist() == [2.0, 1.0]
    assert data.completeness_error.tolist() == [0.25, 0.25] and data.quadrature_delta.tolist() == [-0.125, -0.125]
    assert (data.steps, data.rule, data.space, data.error_node, data.k, data.d_sae, data.layer, data.activations) == (
        5, "riemann_middle", "latent", True, 8, 3, 3, "fair-esm")
    write_attributions([], {"npz": tmp_path / "none.npz"}, ig_settings(error_node=False, space="pre"), meta)
    empty = Attributions.read(tmp_path / "none.npz")
    assert empty.attribution.shape == empty.abs_delta.shape == (0, 3) and empty.mutant.tolist() == []
    assert (empty.error_node, empty.space) == (False, "pre")
    assert attributions_file([], steps=1, rule="gausslegendre", space="latent", error_node=True, k=8, d_sae=3,
                             layer=1, activations="interprot").mutant.dtype.kind == "U"


def test_summary_line():
    r = hand_result("K2A", [0.5, -1.0, 0.25], err=0.5, total=0.5)
    assert summary(r) == "T=0.5, ΣA=-0.25, A_err=0.5, completeness error 2.50e-01"
    assert IG.summary is summary and IG.run is attribute and IG.write is write_attributions


def test_attribute_protein_resumes_from_its_work_folder(splices, tmp_path):
    """A mutant's piece already in the job's work folder is used as it is, not recomputed."""
    work = WorkFolder(tmp_path / "P_L1.npz", "key")
    work.save(0, MUTANTS[0].name, hand_result(MUTANTS[0].name, [0.5] * 96, total=3.0))
    (result,) = attribute_protein(splices[1], MUTANTS[:1], ig_settings(steps=2), work=work)
    assert result.attribution.tolist() == [0.5] * 96 and result.total_effect == 3.0


def test_job_log_line(tmp_path, caplog):
    """The job's log names the quadrature and the *median* completeness error: of 0.25, 0.5 and 4 that is 0.5
    (the mean would be 1.58); with no mutants it is nan, and writing warns nothing."""
    meta = LayerMeta(protein="P", layer=3, k=8, d_sae=1, activations="interprot")
    results = [hand_result(n, [0.5], completeness=c) for n, c in (("K2A", 0.25), ("G6W", 4.0), ("V3A", 0.5))]
    with caplog.at_level(logging.INFO, logger="esmsae.analyses.ig"):
        write_attributions(results, {"npz": tmp_path / "a.npz"}, ig_settings(steps=5, rule="riemann_middle"), meta)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            write_attributions([], {"npz": tmp_path / "b.npz"}, ig_settings(steps=4, space="pre", error_node=False),
                               meta)
    assert [r.getMessage() for r in caplog.records if r.name == "esmsae.analyses.ig"] == [
        "P L3: 3 mutants, steps=5 rule=riemann_middle space=latent error_node=True, median completeness error 0.5",
        "P L3: 0 mutants, steps=4 rule=gausslegendre space=pre error_node=False, median completeness error nan"]
