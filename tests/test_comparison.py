"""AtP against autograd and IG, the spread over positions against fair-esm, and the agreement tables by hand."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses import positions as positions_module
from esmsae.analyses.api import LayerMeta
from esmsae.analyses.arrays import Attributions
from esmsae.analyses.atp import attribution_patching, write_atp
from esmsae.analyses.atp import summary as atp_summary
from esmsae.analyses.positions import Spread, spread, spread_tables, write_spread
from esmsae.analyses.positions import summary as spread_summary
from esmsae.config.settings import PositionSettings
from esmsae.inputs.mutations import parse_mutant
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import write_csv
from esmsae.tables.agreement import (
    agreement_by_mutant,
    agreement_summary,
    mutant_agreement,
    tabulate_agreement,
    top_overlap,
)
from esmsae.tables.positions import site_share_table, tabulate_site_share

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
    rows, summary = spread_tables([result], SEQ, 2, "interprot")
    assert rows["residue"].tolist() == ["<cls>", *SEQ, "<eos>"] and rows["position"].tolist()[:2] == [0, 1]
    assert summary["site_share"].iloc[0] == pytest.approx(result.site_share)


def test_spread_needs_the_whole_residual_stream(splices):
    with pytest.raises(ValueError, match="^position spread needs the mutant's residual stream at every token$"):
        spread(view_of(splices[2], MUTANTS[0]), POSITIONS)


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
                            "site_share": [0.5, 1.0, np.nan], "layer": 4, "activations": "interprot"})
    table = site_share_table({("P", 4): summary})
    row = table.iloc[0]
    assert (row["n_mutants"], row["n_negligible"]) == (3, 1)
    assert row["site_share_mean"] == pytest.approx(0.75) and row["site_share_median"] == pytest.approx(0.75)
    assert row["site_share_sem"] == pytest.approx(np.std([0.5, 1.0], ddof=1) / np.sqrt(2))


# -- AtP on a score whose gradient is worked out by hand ------------------------------------------
class QuadraticView:
    """A stand-in :class:`MutantView` of a two-site mutant (3 features, a 2-d error) whose score is
    ``S(v, e) = sign · (Σ_sj C_sj v_sj² + Σ_sc W_sc e_sc + Σ_sc e_sc²)`` (no error term when ``e`` is None),
    so ``∂S/∂v = 2 C v`` and ``∂S/∂e = W`` at ``e = 0``."""

    C = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 2.0]])
    W = torch.tensor([[1.0, 2.0], [3.0, 1.0]])

    def __init__(self, sign: float = 1.0):
        self.sign = sign
        self.mutant = SimpleNamespace(name="A1C:D2E")
        self.start = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])   # z_wt at the two sites
        self.end = torch.tensor([[3.0, 0.0, 1.0], [0.0, 1.0, 3.0]])     # z_mut: Δ = [[2, 0, −1], [0, 0, 2]]
        self.error_change = torch.tensor([[1.0, 1.0], [0.0, -2.0]])     # ẽ_mut − e_wt

    def score(self, v, e):
        s = (self.C * v**2).sum((1, 2))
        if e is not None:
            s = s + (self.W * e).sum((1, 2)) + (e**2).sum((1, 2))
        return self.sign * s

    def differentiate(self, use):
        return use(self.score)

    def effects(self, values, error_delta=None):
        return SimpleNamespace(effects=self.score(values, error_delta) - self.score(self.start.unsqueeze(0), None))


def test_atp_and_its_linear_error_by_hand():
    """∂S/∂z at z_wt = 2·C·z_wt = [[2, 0, 4], [0, 2, 4]]; times Δ: [[4, 0, −4], [0, 0, 8]], summed over the
    sites A = [4, 0, 4] (Σ_sites |Δ·∂S| would give [4, 0, 12]). A_err = ⟨ẽ − e, W⟩ = 1 + 2 + 0 − 2 = 1.
    T = S(z_mut, ẽ) − S(z_wt, e_wt) = (29 + 1 + 6) − 8 = 28, so the linear error is |8 + 1 − 28| / 28 = 19/28.
    abs_delta = Σ_sites |Δ| = [2, 0, 3] (|Σ_sites Δ| would be [2, 0, 1])."""
    result = attribution_patching(QuadraticView(), ig_settings(error_node=True))
    assert result.mutant == "A1C:D2E"
    assert result.attribution.tolist() == [4.0, 0.0, 4.0]
    assert result.abs_delta.tolist() == [2.0, 0.0, 3.0]
    assert result.error_attribution == 1.0 and result.total_effect == 28.0
    assert result.completeness_error == pytest.approx(19 / 28, rel=1e-12)
    assert np.isnan(result.quadrature_delta)  # AtP has no quadrature of its own
    assert atp_summary(result) == "T=28, ΣA_atp=8, linear error 6.79e-01"


def test_atp_linear_error_without_the_error_node_and_with_a_negative_total():
    """Without an error node: A_err = 0 and T = S(z_mut, e_wt) − S(z_wt, e_wt) = 29 − 8 = 21, so the error
    is |8 − 21| / 21 = 13/21. With the score negated, A = [−4, 0, −4], A_err = −1 and T = −28: the error
    divides by |T|, |−9 + 28| / 28 = 19/28 (dividing by T would make it negative)."""
    without = attribution_patching(QuadraticView(), ig_settings(error_node=False))
    assert without.error_attribution == 0.0 and without.total_effect == 21.0
    assert without.attribution.tolist() == [4.0, 0.0, 4.0]
    assert without.completeness_error == pytest.approx(13 / 21, rel=1e-12)
    negative = attribution_patching(QuadraticView(sign=-1.0), ig_settings(error_node=True))
    assert negative.attribution.tolist() == [-4.0, 0.0, -4.0]
    assert negative.error_attribution == -1.0 and negative.total_effect == -28.0
    assert negative.completeness_error == pytest.approx(19 / 28, rel=1e-12)


def test_write_atp_is_ig_with_one_left_riemann_step_on_disk(tmp_path):
    """The file records steps 1 and rule riemann_left beside the run's space, error node and the SAE's k, d_sae."""
    results = [attribution_patching(QuadraticView(), ig_settings(error_node=False)),
               attribution_patching(QuadraticView(sign=-1.0), ig_settings(error_node=False))]
    path = tmp_path / "atp.npz"
    write_atp(results, {"npz": path}, ig_settings(space="pre", error_node=False),
              LayerMeta(protein="P", layer=3, k=8, d_sae=3, activations="fair-esm"))
    back = Attributions.read(path)
    assert (back.steps, back.rule, back.space, back.error_node, back.k, back.d_sae, back.layer, back.activations) == (
        1, "riemann_left", "pre", False, 8, 3, 3, "fair-esm")
    assert back.mutant.tolist() == ["A1C:D2E", "A1C:D2E"]
    assert back.attribution.tolist() == [[4.0, 0.0, 4.0], [-4.0, 0.0, -4.0]]
    assert back.total_effect.tolist() == [21.0, -21.0]
    assert back.completeness_error == pytest.approx([13 / 21, 13 / 21], rel=1e-12)


# -- spread over positions on an engine whose effects are worked out by hand ----------------------
class CubicEngine:
    """A stand-in engine whose row effect is ``(Σ_{p,c} delta_pc)³``: so ``P_p = (Σ_c change_pc)³`` and
    ``P_all = (Σ_{p,c} change_pc)³`` (not Σ_p P_p). It checks it is asked about every token with the view's spec."""

    offset = 0  # the whole sequence (no window): residue i is token i

    def __init__(self, wt):
        self.h = wt.unsqueeze(0)
        self.rows = []

    def token(self, residue):
        return residue

    def residual_effects(self, positions, deltas, spec):
        assert positions.tolist() == list(range(deltas.shape[1])) and spec == "spec"
        self.rows.append(deltas.shape[0])
        return SimpleNamespace(effects=deltas.sum((1, 2)) ** 3)


def cubic_view(change_sums, sites, name="A1C:D3E"):
    """A view whose residual change at token p sums to ``change_sums[p]`` over its two dimensions
    (split as c − 1/4 and 1/4, on a WT stream that is not zero: all exact in float32)."""
    c = torch.tensor(change_sums)
    wt = torch.stack([torch.arange(len(c), dtype=torch.float32), torch.full((len(c),), -0.5)], 1)
    change = torch.stack([c - 0.25, torch.full_like(c, 0.25)], 1)
    mutant = SimpleNamespace(name=name, sites=[SimpleNamespace(pos=p) for p in sites])
    return SimpleNamespace(hidden=wt + change, engine=CubicEngine(wt), spec="spec", mutant=mutant)


def test_spread_sums_the_signed_site_effects_over_sites(monkeypatch):
    """Change sums c = [0, 1, 1/2, −1/2, 0] (BOS, 3 residues, EOS), sites 1 and 3: P_p = c_p³ =
    [0, 1, 1/8, −1/8, 0], P_all = (Σ c)³ = 1, Σ_sites P_site = 1 − 1/8 = 7/8 (Σ_sites |P_site| would be 9/8,
    the first site alone 1): share 7/8. Two positions per engine call: rows of 2, 2, 1, then P_all's row."""
    monkeypatch.setattr(positions_module, "ROWS_PER_CALL", 2)
    view = cubic_view([0.0, 1.0, 0.5, -0.5, 0.0], sites=(1, 3))
    result = spread(view, PositionSettings(min_effect=0.5))
    assert view.engine.rows == [2, 2, 1, 1]
    assert result.mutant == "A1C:D3E"
    assert result.effects.tolist() == [0.0, 1.0, 0.125, -0.125, 0.0]
    assert (result.all_effect, result.site_effect, result.negligible) == (1.0, 0.875, False)
    assert result.site_share == 0.875
    assert spread_summary(result) == "P_all 1, at the site(s) 0.875 (share 0.875)"


def test_site_share_divides_by_a_negative_p_all_and_min_effect_is_a_strict_bar():
    """c = [1/2, −1, 0, −1, 0], sites 1 and 3: P = [1/8, −1, 0, −1, 0], P_all = (−3/2)³ = −27/8,
    Σ_sites P_site = −2, share = −2 / (−27/8) = 16/27 (dividing by |P_all| would give −16/27).
    Negligible is |P_all| < min_effect: at min_effect = 27/8 exactly the mutant is not negligible; just above it is."""
    result = spread(cubic_view([0.5, -1.0, 0.0, -1.0, 0.0], sites=(1, 3)), PositionSettings(min_effect=3.375))
    assert abs(result.all_effect) == 3.375 and result.all_effect == -3.375  # exactly on the bar
    assert result.site_effect == -2.0 and not result.negligible
    assert result.site_share == pytest.approx(16 / 27, rel=1e-12)
    above = spread(cubic_view([0.5, -1.0, 0.0, -1.0, 0.0], sites=(1, 3)), PositionSettings(min_effect=3.5))
    assert above.negligible and np.isnan(above.site_share)
    assert spread_summary(above) == "P_all -3.375, at the site(s) -2 (negligible)"


def test_site_share_of_a_zero_p_all_is_nan_not_a_division():
    """c = [0, 1, 0, −1, 0], one site at 1: P_all = 0³ = 0 with min_effect 0 (0 < 0 is false: not negligible),
    P_site = 1: no share (NaN), and no ZeroDivisionError."""
    view = cubic_view([0.0, 1.0, 0.0, -1.0, 0.0], sites=(1,), name="A1C")
    result = spread(view, PositionSettings(min_effect=0.0))
    assert view.engine.rows == [5, 1]
    assert (result.all_effect, result.site_effect, result.negligible) == (0.0, 1.0, False)
    assert np.isnan(result.site_share)


def test_spread_tables_and_their_files_by_hand(tmp_path):
    """Two mutants of the WT "ACD" (5 tokens each): one row per mutant and token, residues <cls> A C D <eos>;
    shares 1/2 ÷ 2 = 1/4, 1/4 ÷ (−1/2) = −1/2, and NaN for the negligible one."""
    results = [Spread("A1C", np.array([0.5, 0.25, 0.125, 0.0, -0.5]), 2.0, 0.5, False),
               Spread("C2D", np.array([1.0, 2.0, 0.25, 3.0, 4.0]), -0.5, 0.25, False),
               Spread("D3E", np.zeros(5), 0.01, 0.0, True)]
    rows, summary = spread_tables(results, "ACD", 7, "fair-esm")
    assert list(rows.columns) == TABLES["positions"] and list(summary.columns) == TABLES["positions_summary"]
    assert rows["mutant"].tolist() == ["A1C"] * 5 + ["C2D"] * 5 + ["D3E"] * 5
    assert rows["position"].tolist() == [0, 1, 2, 3, 4] * 3
    assert rows["residue"].tolist() == ["<cls>", "A", "C", "D", "<eos>"] * 3
    assert rows["effect"].tolist() == [0.5, 0.25, 0.125, 0.0, -0.5, 1.0, 2.0, 0.25, 3.0, 4.0] + [0.0] * 5
    assert (rows["layer"] == 7).all() and (summary["layer"] == 7).all()
    assert (rows["activations"] == "fair-esm").all() and (summary["activations"] == "fair-esm").all()
    assert summary["mutant"].tolist() == ["A1C", "C2D", "D3E"]
    assert summary["site_effect"].tolist() == [0.5, 0.25, 0.0] and summary["all_effect"].tolist() == [2.0, -0.5, 0.01]
    assert summary["negligible"].tolist() == [False, False, True]
    assert summary["site_share"].tolist()[:2] == [0.25, -0.5] and np.isnan(summary["site_share"].iloc[2])
    write_spread(results, {"effects": tmp_path / "effects.csv", "summary": tmp_path / "summary.csv"},
                 PositionSettings(min_effect=0.1),
                 LayerMeta(protein="P", layer=7, k=8, d_sae=96, activations="fair-esm", wt_seq="ACD"))
    effects = read_table(tmp_path / "effects.csv", "positions")
    assert effects["residue"].tolist() == rows["residue"].tolist() and effects["effect"].tolist() == rows[
        "effect"].tolist()
    back = read_table(tmp_path / "summary.csv", "positions_summary")
    assert back["site_share"].tolist()[:2] == [0.25, -0.5] and (back["layer"] == 7).all()
    assert (effects["activations"] == "fair-esm").all() and (back["activations"] == "fair-esm").all()
    empty_rows, empty_summary = spread_tables([], "ACD", 7, "fair-esm")
    assert list(empty_rows.columns) == TABLES["positions"] and len(empty_rows) == 0
    assert list(empty_summary.columns) == TABLES["positions_summary"] and len(empty_summary) == 0


# -- the site share table -------------------------------------------------------------------------
def site_summary(shares, all_effects, site_effects, negligible, activations="interprot"):
    return pd.DataFrame({"mutant": [f"M{i}" for i in range(len(shares))], "site_effect": site_effects,
                         "all_effect": all_effects, "negligible": negligible, "site_share": shares, "layer": 4,
                         "activations": activations})


def test_site_share_table_median_is_not_the_mean_and_groups_stay_apart():
    """Protein P: shares 1/4, 1/2, 2 (odd count, skewed) and one negligible mutant: mean 11/12, median 1/2,
    s.e.m. std([1/4, 1/2, 2], ddof=1)/√3; the negligible flag as a CSV gives it ("True"/"False") or as bools.
    Mean |P_all| = (2 + 1 + 1/2 + 1/4) / 4 = 15/16 (signed: 7/16); mean |P_site| = (1/2 + 1/2 + 1 + 0) / 4 = 1/2
    (signed: 1/4). Protein Q, only negligible mutants: no share (NaN mean and median), counted apart."""
    p = site_summary([0.25, 0.5, 2.0, np.nan], [2.0, -1.0, 0.5, 0.25], [0.5, -0.5, 1.0, 0.0],
                     ["False", "false", False, "True"])
    q = site_summary([np.nan, np.nan], [0.125, -0.0625], [0.0625, 0.0], [True, "true"], activations="fair-esm")
    table = site_share_table({("P", 4): p, ("Q", 2): q})
    assert list(table.columns) == TABLES["site_share"]
    first, second = table.iloc[0], table.iloc[1]
    assert (first["protein"], first["layer"], first["n_mutants"], first["n_negligible"]) == ("P", 4, 4, 1)
    assert first["site_share_mean"] == pytest.approx(11 / 12) and first["site_share_median"] == 0.5
    assert first["site_share_sem"] == pytest.approx(np.std([0.25, 0.5, 2.0], ddof=1) / np.sqrt(3))
    assert first["all_effect_mean_abs"] == 15 / 16 and first["site_effect_mean_abs"] == 0.5
    assert (second["protein"], second["layer"], second["n_mutants"], second["n_negligible"]) == ("Q", 2, 2, 2)
    assert np.isnan(second["site_share_mean"]) and np.isnan(second["site_share_median"])
    assert second["all_effect_mean_abs"] == 0.09375 and second["site_effect_mean_abs"] == 0.03125
    assert table["activations"].tolist() == ["interprot", "fair-esm"]  # each group's own forward


def test_tabulate_site_share_reads_the_summaries_and_writes_the_table(tmp_path):
    """Shares 1/4, 1/2, 4 from the rule's own files: median 1/2, mean 19/12."""
    path = tmp_path / "summary.csv"
    write_csv(site_summary([0.25, 0.5, 4.0], [4.0, -2.0, 0.25], [1.0, -1.0, 1.0], [False, False, False]), path)
    tabulate_site_share({("P", 4): path}, tmp_path / "site_share.csv")
    row = read_table(tmp_path / "site_share.csv", "site_share").iloc[0]
    assert (row["protein"], row["layer"], row["n_mutants"], row["n_negligible"]) == ("P", 4, 3, 0)
    assert row["site_share_median"] == 0.5 and row["site_share_mean"] == pytest.approx(19 / 12)
    assert row["all_effect_mean_abs"] == pytest.approx(6.25 / 3) and row["site_effect_mean_abs"] == 1.0
    assert row["activations"] == "interprot"


# -- agreement: top-10 overlap, its chance level, the per-mutant and summary tables ---------------
def test_top_overlap_ties_go_to_the_earlier_entry():
    """40 entries, |exact| = 2 at even and 1 at odd indices: the stable top 10 is {0, 2, …, 18}; the estimate
    ranks exactly those first (decreasing by index), so the overlap is 10/10. An unstable sort picks other ties."""
    exact = np.array([2.0 if i % 2 == 0 else 1.0 for i in range(40)])
    estimate = exact - np.arange(40) / 1000
    assert top_overlap(exact, estimate) == 1.0
    assert top_overlap(estimate, exact) == 1.0


def test_top_overlap_at_the_default_ten():
    """12 entries 12, 11, …, 1: the exact top 10 is indices 0–9; the estimate swaps entries 9 and 10, so its
    top 10 is 0–8 and 10: 9 shared of min(10, 12) = 10."""
    exact = np.arange(12.0, 0.0, -1.0)
    estimate = exact.copy()
    estimate[[9, 10]] = estimate[[10, 9]]
    assert top_overlap(exact, estimate) == 0.9
    assert top_overlap(-exact, estimate) == 0.9  # tops by absolute value


def test_top10_chance_below_at_and_above_ten_changed_features():
    """Chance ``min(10, |C|) / |C|``: |C| = 9 → 1, 10 → 1, 11 → 10/11. An empty changed set has no statistics."""
    values = np.arange(1.0, 12.0)
    for n, chance in ((9, 1.0), (10, 1.0), (11, 10 / 11)):
        out = mutant_agreement(np.arange(n), values[:n], values, values)
        assert out["n_changed"] == n and out["top10_chance"] == chance
        assert out["top10_atp"] == 1.0 and out["spearman_atp"] == pytest.approx(1.0)
    empty = mutant_agreement([], [], values, values)
    assert empty["n_changed"] == 0
    assert all(np.isnan(empty[key]) for key in ("spearman_atp", "spearman_ig", "top10_atp", "top10_ig",
                                                 "top10_chance"))


D_SAE_HAND = 12


def hand_attributions(mutants, rows, linear_error, k=8, space="latent", activations="interprot"):
    """Attributions built by hand: rows (n, d_sae) and each mutant's completeness error."""
    n = len(mutants)
    return Attributions(mutant=np.array(mutants), attribution=np.array(rows, dtype=np.float64),
                        abs_delta=np.ones((n, D_SAE_HAND)), error_attribution=np.zeros(n), total_effect=np.ones(n),
                        completeness_error=np.array(linear_error), quadrature_delta=np.zeros(n), steps=1,
                        rule="riemann_left", space=space, k=k, d_sae=D_SAE_HAND, error_node=True, layer=3,
                        activations=activations)


def hand_patching():
    """A1C changes features 0–10 (exact effect f + 1); D2E changes 3, 5, 6 (0.5, −0.25, 1), rows not in
    feature order. Each real row has a noop row beside it (effect 0); a random row (feature 11, effect 5) too."""
    rows = [("D2E", 6, "real", 1.0), ("D2E", 3, "real", 0.5), ("D2E", 5, "real", -0.25), ("D2E", 11, "random", 5.0)]
    rows += [("A1C", f, "real", f + 1.0) for f in reversed(range(11))] + [("A1C", 11, "random", 5.0)]
    rows += [(m, f, "noop", 0.0) for m, f, c, _ in list(rows) if c == "real"]
    frame = pd.DataFrame(rows, columns=["mutant", "feature", "control", "effect"])
    for column in TABLES["patching"]:
        if column not in frame:
            frame[column] = {"position": "0", "space": "latent", "activations": "interprot"}.get(column, 0.0)
    return frame[TABLES["patching"]]


def hand_ig_and_atp():
    """AtP: A1C's row equals the exact effects (ρ 1, overlap 1); D2E's (3, 5, 6) → (1, 2, 3): ranks (2, 1, 3)
    against (1, 2, 3), Σd² = 2, ρ = 1 − 6·2/24 = 1/2. IG (written in the other mutant order): A1C's is −(f + 1)
    with features 0 and 10 swapped: top 10 by |·| is 0–9 against exact's 1–10 (9 of 10), ranks 1, 11 − f (f 1–9),
    11 against f + 1: Σd² = 4·Σ(f − 5)² = 240, ρ = 1 − 6·240/(11·120) = −1/11; D2E's (3, 5, 6) → (3, 2, 1):
    d = (−1, −1, 2), ρ = 1 − 6·6/24 = −1/2."""
    atp_a1c = np.zeros(D_SAE_HAND)
    atp_a1c[:11] = np.arange(1.0, 12.0)
    atp_d2e = np.zeros(D_SAE_HAND)
    atp_d2e[[3, 5, 6]] = [1.0, 2.0, 3.0]
    ig_a1c = np.zeros(D_SAE_HAND)
    ig_a1c[:11] = -np.arange(1.0, 12.0)
    ig_a1c[[0, 10]] = ig_a1c[[10, 0]]
    ig_d2e = np.zeros(D_SAE_HAND)
    ig_d2e[[3, 5, 6]] = [3.0, 2.0, 1.0]
    atp = hand_attributions(["A1C", "D2E"], [atp_a1c, atp_d2e], [0.25, 0.125])
    ig = hand_attributions(["D2E", "A1C"], [ig_d2e, ig_a1c], [0.5, 0.75], k=99, space="pre")
    return ig, atp


def test_agreement_by_mutant_by_hand():
    ig, atp = hand_ig_and_atp()
    table = agreement_by_mutant({("P", 3): hand_patching()}, {("P", 3): ig}, {("P", 3): atp})
    assert list(table.columns) == TABLES["agreement_mutants"]
    assert table["mutant"].tolist() == ["A1C", "D2E"] and table["protein"].tolist() == ["P", "P"]
    assert table["layer"].tolist() == [3, 3] and table["n_changed"].tolist() == [11, 3]
    assert table["spearman_atp"].tolist() == pytest.approx([1.0, 0.5])
    assert table["spearman_ig"].tolist() == pytest.approx([-1 / 11, -0.5])
    assert table["top10_atp"].tolist() == [1.0, 1.0] and table["top10_ig"].tolist() == [0.9, 1.0]
    assert table["top10_chance"].tolist() == [10 / 11, 1.0]
    assert table["atp_linear_error"].tolist() == [0.25, 0.125]  # AtP's completeness error, not IG's
    assert table["k"].tolist() == [8, 8] and table["d_sae"].tolist() == [12, 12]
    assert table["space"].tolist() == ["latent", "latent"] and table["activations"].tolist() == ["interprot"] * 2
    lacking = hand_attributions(["D2E"], [np.zeros(D_SAE_HAND)], [0.5])
    with pytest.raises(ValueError, match="lack mutant A1C"):
        agreement_by_mutant({("P", 3): hand_patching()}, {("P", 3): lacking}, {("P", 3): atp})
    other = dataclasses.replace(ig, activations="fair-esm")  # IG of another forward than AtP and the patches
    with pytest.raises(InputError, match=r"^agreement \('P', layer 3\): inputs measured on different forwards "
                                         r"\(activations fair-esm, interprot\)"):
        agreement_by_mutant({("P", 3): hand_patching()}, {("P", 3): other}, {("P", 3): atp})


def test_agreement_summary_is_a_mean_over_mutants_and_a_median_linear_error():
    """Q (first seen) has one mutant: its values, no s.e.m. P has three: ρ_atp 1, 1/2, −3/4 → mean 1/4 and
    s.e.m. std(ddof=1)/√3; ρ_ig 1/2, NaN, 1/4 → mean 3/8 over the finite two; linear errors 1/64, 1/32, 1
    (odd, skewed) → median 1/32 (the mean would be 0.34); chance 1, 1/2, 1 → mean 5/6."""
    rows = [("Q", 1, "A1C", 0.5, 0.25, 1.0, 0.5, 1.0, 0.125)]
    rows += [("P", 3, "A1C", 1.0, 0.5, 1.0, 0.9, 1.0, 1 / 64), ("P", 3, "D2E", 0.5, np.nan, 0.5, 0.7, 0.5, 1 / 32),
             ("P", 3, "E3F", -0.75, 0.25, 0.75, 0.8, 1.0, 1.0)]
    frame = pd.DataFrame(rows, columns=["protein", "layer", "mutant", "spearman_atp", "spearman_ig", "top10_atp",
                                        "top10_ig", "top10_chance", "atp_linear_error"])
    frame["n_changed"], frame["k"], frame["d_sae"] = 12, 8, 96
    frame["space"], frame["activations"] = "latent", "fair-esm"
    summary = agreement_summary(frame[TABLES["agreement_mutants"]])
    assert list(summary.columns) == TABLES["attribution_agreement"]
    q, p = summary.iloc[0], summary.iloc[1]
    assert (q["protein"], q["layer"], q["n_mutants"], p["protein"], p["layer"], p["n_mutants"]) == (
        "Q", 1, 1, "P", 3, 3)
    assert (q["spearman_atp_mean"], q["top10_ig_mean"], q["atp_linear_error_median"]) == (0.5, 0.5, 0.125)
    assert np.isnan(q["spearman_atp_sem"])
    assert p["spearman_atp_mean"] == pytest.approx(0.25)
    assert p["spearman_atp_sem"] == pytest.approx(np.std([1.0, 0.5, -0.75], ddof=1) / np.sqrt(3))
    assert p["spearman_ig_mean"] == pytest.approx(0.375)
    assert p["spearman_ig_sem"] == pytest.approx(np.std([0.5, 0.25], ddof=1) / np.sqrt(2))
    assert p["top10_atp_mean"] == pytest.approx(0.75) and p["top10_ig_mean"] == pytest.approx(0.8)
    assert p["top10_atp_sem"] == pytest.approx(0.25 / np.sqrt(3))  # std(1, 0.5, 0.75; ddof 1) = 0.25
    assert p["top10_ig_sem"] == pytest.approx(0.1 / np.sqrt(3))    # std(0.9, 0.7, 0.8; ddof 1) = 0.1
    assert p["top10_chance_mean"] == pytest.approx(5 / 6)
    assert p["atp_linear_error_median"] == 1 / 32
    assert (p["k"], p["d_sae"], p["space"], p["activations"]) == (8, 96, "latent", "fair-esm")


def test_tabulate_agreement_from_the_rules_files(tmp_path):
    """The by-hand case of test_agreement_by_mutant_by_hand through the files the rule reads and writes:
    P at layer 3, ρ_atp 1 and 1/2 → mean 3/4; linear errors 1/4 and 1/8 → median 3/16."""
    ig, atp = hand_ig_and_atp()
    write_csv(hand_patching(), tmp_path / "patching.csv")
    ig.write(tmp_path / "ig.npz")
    atp.write(tmp_path / "atp.npz")
    out = {"mutants": tmp_path / "mutants.csv", "table": tmp_path / "table.csv"}
    key = ("P", 3)
    tabulate_agreement({key: tmp_path / "patching.csv"}, {key: tmp_path / "ig.npz"}, {key: tmp_path / "atp.npz"}, out)
    mutants = read_table(out["mutants"], "agreement_mutants")
    assert mutants["mutant"].tolist() == ["A1C", "D2E"] and mutants["top10_ig"].tolist() == [0.9, 1.0]
    row = read_table(out["table"], "attribution_agreement").iloc[0]
    assert (row["protein"], row["layer"], row["n_mutants"]) == ("P", 3, 2)
    assert row["spearman_atp_mean"] == pytest.approx(0.75) and row["atp_linear_error_median"] == 0.1875


def test_tables_without_mutants_keep_their_columns():
    """A layer whose AtP file holds no mutant, and a study with no site-share input: empty tables that still
    carry their header (a CSV without one cannot be read back)."""
    _, atp = hand_ig_and_atp()
    none = hand_attributions([], np.zeros((0, D_SAE_HAND)), [])
    by_mutant = agreement_by_mutant({("P", 3): hand_patching()}, {("P", 3): atp}, {("P", 3): none})
    assert list(by_mutant.columns) == TABLES["agreement_mutants"] and len(by_mutant) == 0
    summary = agreement_summary(by_mutant)
    assert list(summary.columns) == TABLES["attribution_agreement"] and len(summary) == 0
    shares = site_share_table({})
    assert list(shares.columns) == TABLES["site_share"] and len(shares) == 0
