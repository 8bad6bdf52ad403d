"""AtP against autograd and IG, the spread over positions against fair-esm, and the agreement tables by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.atp import attribution_patching
from esmsae.analyses.positions import spread, spread_tables
from esmsae.config.settings import PositionSettings
from esmsae.inputs.mutations import parse_mutant
from esmsae.tables.agreement import mutant_agreement, top_overlap
from esmsae.tables.positions import site_share_table

from .conftest import DEFAULTS, LAYERS, WT, ig_settings, splice_every_layer, view_of
from .reference import hooked_logits, score_from_logits

SEQ = WT["EPHB2_HUMAN"]
MUTANTS = [parse_mutant(t, SEQ) for t in ("F2A", "W8R", "M14K", "L41P")]
DOUBLE = parse_mutant("F2A:L41P", SEQ)
POSITIONS = dataclasses.replace(DEFAULTS.positions, min_effect=0.0)


@pytest.fixture(scope="module")
def splices(lm, saes):
    return splice_every_layer(lm, saes, SEQ)


def full_view(splice, mutant, space="latent"):
    """The view with the mutant's residual stream at every token (as the shared loop builds it)."""
    return splice.view(mutant, splice.hidden([mutant.apply(SEQ)])[0], space)


@pytest.mark.parametrize("layer", LAYERS)
def test_atp_is_the_gradient_at_the_wt_code_times_the_change(splices, layer):
    """AtP by hand: autograd of the score at (z_wt, e_wt), and a central finite difference per feature."""
    splice = splices[layer]
    for mutant in (MUTANTS[1], DOUBLE):
        view = view_of(splice, mutant)
        result = attribution_patching(view, ig_settings())
        z = view.wt.z.clone().unsqueeze(0).requires_grad_(True)
        e = torch.zeros_like(view.error_change).unsqueeze(0).requires_grad_(True)
        score = splice.run(view.wt.positions, splice.delta(view.wt, z, e), view.spec)
        gz, ge = torch.autograd.grad(score.sum(), (z, e))
        expected = ((view.end - view.start) * gz[0]).sum(0)
        assert torch.allclose(result.attribution, expected, atol=1e-6)
        assert result.error_attribution == pytest.approx(float((view.error_change * ge[0]).sum()), abs=1e-6)
        moved = torch.nonzero((view.end != view.start).any(0)).flatten()[:3]
        step = 1e-2
        with torch.no_grad():
            for j in moved.tolist():  # ∂S/∂z_j by a central difference, in float64 on the same model
                plus, minus = view.wt.z.clone().double(), view.wt.z.clone().double()
                plus[:, j] += step
                minus[:, j] -= step
                s = [float(splice.run(view.wt.positions, splice.delta(view.wt, x.float().unsqueeze(0)), view.spec))
                     for x in (plus, minus)]
                slope = (s[0] - s[1]) / (2 * step)
                assert float(gz[0, :, j].sum()) == pytest.approx(slope, rel=0.05, abs=1e-4)


def test_atp_is_ig_with_one_left_riemann_step(splices):
    """IG's quadrature with the single node α = 0 and weight 1, written out: exactly AtP."""
    splice = splices[2]
    for mutant in MUTANTS:
        view = view_of(splice, mutant)
        atp = attribution_patching(view, ig_settings())

        def one_left_step(score, view=view):
            v, e = view.start.unsqueeze(0).clone().requires_grad_(True), (0 * view.error_change).unsqueeze(0)
            e.requires_grad_(True)
            return torch.autograd.grad(score(v, e).sum(), (v, e))

        gv, ge = view.differentiate(one_left_step)
        assert torch.equal(atp.attribution, ((view.end - view.start) * gv[0]).sum(0))
        assert atp.error_attribution == float((view.error_change * ge[0]).sum())
        assert atp.total_effect == pytest.approx(float(view.effects(view.end.unsqueeze(0),
                                                                    view.error_change.unsqueeze(0)).effects[0]))


def test_atp_without_the_error_node(splices):
    view = view_of(splices[3], MUTANTS[0])
    result = attribution_patching(view, ig_settings(error_node=False))
    assert result.error_attribution == 0.0
    assert result.total_effect == pytest.approx(float(view.effects(view.end.unsqueeze(0)).effects[0]))


@pytest.mark.parametrize("layer", LAYERS)
def test_p_all_is_the_mutants_own_score_and_p_p_a_hooked_forward(lm, splices, layer):
    splice = splices[layer]
    for mutant in (MUTANTS[2], DOUBLE):
        view = full_view(splice, mutant)
        result = spread(view, POSITIONS)
        tokens = lm.tokenize([mutant.apply(SEQ)])
        with torch.no_grad():
            own = torch.log_softmax(lm.logits(tokens)[0], -1)
        wt_score = score_from_logits(hooked_logits(lm, SEQ, layer, {}), lm, mutant)
        mutant_own = sum(float(own[s.pos, lm.token_index(s.mut)] - own[s.pos, lm.token_index(s.wt)])
                         for s in mutant.sites)
        assert result.all_effect == pytest.approx(mutant_own - wt_score, abs=1e-5)
        assert len(result.effects) == len(SEQ) + 2
        for p in (0, 1, mutant.sites[0].pos, len(SEQ) + 1):  # BOS, a residue, the site, EOS
            hooked = hooked_logits(lm, SEQ, layer, {p: view.hidden[p]})
            assert result.effects[p] == pytest.approx(score_from_logits(hooked, lm, mutant) - wt_score, abs=1e-5)
        assert np.abs(result.effects).max() > 0


def test_site_share_sums_over_the_sites(splices):
    view = full_view(splices[2], DOUBLE)
    result = spread(view, POSITIONS)
    assert result.site_effect == pytest.approx(result.effects[2] + result.effects[41])
    assert result.site_share == pytest.approx((result.effects[2] + result.effects[41]) / result.all_effect)
    negligible = spread(view, dataclasses.replace(POSITIONS, min_effect=abs(result.all_effect) * 2))
    assert negligible.negligible and np.isnan(negligible.site_share)
    rows, summary = spread_tables([result], SEQ, 2)
    assert rows["residue"].tolist() == ["<cls>", *SEQ, "<eos>"] and rows["position"].tolist()[:2] == [0, 1]
    assert summary["site_share"].iloc[0] == pytest.approx(result.site_share)


def test_spread_needs_the_whole_residual_stream(splices):
    with pytest.raises(ValueError, match="every token"):
        spread(view_of(splices[2], MUTANTS[0]), POSITIONS)
    assert isinstance(PositionSettings(min_effect=0.1).min_effect, float)


def test_top_overlap_and_agreement_by_hand():
    # tops by |value|, n = 2: exact {0, 1}, estimate {3, 1} → 1 of 2.
    assert top_overlap([5, -4, 3, 0.1], [0.2, 4, -3, 5], n=2) == 0.5
    assert top_overlap([1, 2, 3], [3, 2, 1], n=10) == 1.0  # fewer than 10: min(10, |C|) = 3, all shared
    assert np.isnan(top_overlap([], []))
    atp = np.zeros(10)
    ig = np.zeros(10)
    atp[[2, 5, 7]] = [0.3, -0.2, 0.1]   # same order as the exact effects: ρ = 1
    ig[[2, 5, 7]] = [-0.4, 0.5, 0.2]    # exact ranks (3, 1, 2), these (1, 3, 2): Σd² = 8, ρ = 1 − 6·8/24 = −1
    out = mutant_agreement(np.array([2, 5, 7]), np.array([0.5, -0.4, 0.2]), atp, ig)
    assert out["n_changed"] == 3 and out["spearman_atp"] == pytest.approx(1.0)
    assert out["spearman_ig"] == pytest.approx(-1.0) and out["top10_atp"] == 1.0
    assert out["top10_chance"] == 1.0  # with 3 changed features any two top-10s are the same set
    wide = mutant_agreement(np.arange(20), np.arange(20.0), np.arange(20.0), -np.arange(20.0))
    assert wide["top10_chance"] == 0.5 and wide["top10_ig"] == 1.0  # |values|: the same top 10 either way


def test_site_share_table_by_hand():
    summary = pd.DataFrame({"mutant": ["A1C", "D2E", "F3G"], "site_effect": [1.0, 0.5, 0.01],
                            "all_effect": [2.0, 0.5, 0.02], "negligible": [False, False, True],
                            "site_share": [0.5, 1.0, np.nan], "layer": 4})
    table = site_share_table({("P", 4): summary})
    row = table.iloc[0]
    assert (row["n_mutants"], row["n_negligible"]) == (3, 1)
    assert row["site_share_mean"] == pytest.approx(0.75) and row["site_share_median"] == pytest.approx(0.75)
    assert row["site_share_sem"] == pytest.approx(np.std([0.5, 1.0], ddof=1) / np.sqrt(2))
