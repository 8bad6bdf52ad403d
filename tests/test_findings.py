"""Findings (METHOD.md "Findings"): every verdict worked out by hand, one of each kind, and each test at its bar."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

from esmsae.analyses.arrays import Attributions
from esmsae.pipeline.columns import TABLES
from esmsae.tables.findings import (
    NOT_SUPPORTED,
    NULL,
    SUPPORTED,
    ablation_claims,
    empirical,
    paired_greater,
    peak_layer,
    universal_claim,
    universal_count,
    verdict,
)


def test_verdict_at_the_bar():
    assert verdict(0.049, 0.9) == SUPPORTED
    assert verdict(0.05, 0.9) == NULL            # p must be below alpha, not at it
    assert verdict(0.9, 0.049) == NOT_SUPPORTED
    assert verdict(0.9, 0.05) == NULL
    assert verdict(float("nan"), float("nan")) == NULL
    assert verdict(0.01, 0.01, alpha=0.005) == NULL


def test_paired_wilcoxon_one_sided_by_hand():
    """Five pairs all in the claimed direction: the exact one-sided p is 1/2⁵ = 1/32; four: 1/16 (not < 0.05)."""
    up = paired_greater(np.array([2.0, 3, 4, 5, 6]), np.ones(5))
    assert up == (1 / 32, 1.0, 5)
    assert verdict(*up[:2]) == SUPPORTED
    down = paired_greater(np.ones(5), np.array([2.0, 3, 4, 5, 6]))
    assert verdict(*down[:2]) == NOT_SUPPORTED
    four = paired_greater(np.array([2.0, 3, 4, 5]), np.ones(4))
    assert four[0] == 1 / 16 and verdict(*four[:2]) == NULL
    assert np.isnan(paired_greater(np.ones(3), np.ones(3))[0])                       # all differences 0
    assert paired_greater(np.array([2.0, np.nan, 4]), np.array([1.0, 1, 1]))[2] == 2  # NaN pairs dropped
    # a missing value given as None (an object column) is NaN too: the other five pairs, all up: 1/32
    assert paired_greater([2.0, None, 3, 4, 5, 6], [1.0] * 6) == (1 / 32, 1.0, 5)
    assert paired_greater([1.0] * 6, [2.0, 3, None, 4, 5, 6]) == (1.0, 1 / 32, 5)


def test_empirical_p_both_ways_by_hand():
    assert empirical(3.0, np.array([1.0, 2, 3, 4])) == (3 / 5, 4 / 5)  # (1 + #{≥3}) / 5 and (1 + #{≤3}) / 5
    assert empirical(9.0, np.zeros(99)) == (1 / 100, 1.0)


def values(real: dict[int, list[float]], random: list[float], layer_of_random: int) -> pd.DataFrame:
    rows = []
    for layer, means in real.items():
        for m, value in enumerate(means):
            rows.append({"protein": "P", "layer": layer, "mutant": f"m{m}", "real_mean": value,
                         "real_max": value, "random_mean": random[m] if layer == layer_of_random else np.nan,
                         "random_max": np.nan})
    return pd.DataFrame(rows)


def test_peak_layer_needs_both_tests():
    """Six mutants, layer 4 above layer 2 for each (p = 1/64), and real above random at layer 4 for each
    (1/64): supported with p = 1/64. With random above real at layer 4: not supported (the other way)."""
    real = {2: [1.0, 1, 1, 1, 1, 1], 4: [2.0, 3, 2, 3, 2, 3]}
    out = peak_layer(values(real, [0.5] * 6, 4), "P", 0.05)
    assert (out["verdict"], out["p"], out["n"]) == (SUPPORTED, 1 / 64, 6)
    assert out["statistic"] == 2.5 and out["null"] == 1.0 and "layer 4" in out["sentence"]
    beaten = peak_layer(values(real, [4.0] * 6, 4), "P", 0.05)
    assert beaten["verdict"] == NOT_SUPPORTED
    mixed = peak_layer(values(real, [2.5, 2.5, 2.5, 2.5, 2.5, 2.5], 4), "P", 0.05)  # real 2,3,2,3,2,3 vs 2.5
    assert mixed["verdict"] == NULL


def test_universal_count_by_hand():
    """At layer 2, P's mutants have top sets {1, 2} and {1, 3}: 1 in 2 of 2, 2 and 3 in 1 of 2 (half counts);
    Q's {1, 4}, {5, 6}, {1, 7}: 1 in 2 of 3 (2·2 ≥ 3), the others 1 of 3 (no). Only 1 meets the bar in both."""
    tops = {("P", 2): [{1, 2}, {1, 3}], ("Q", 2): [{1, 4}, {5, 6}, {1, 7}], ("Q", 4): [{2}]}
    assert universal_count(tops) == 1
    tops[("P", 4)] = [{2}, {9}]  # layer 4: 2 is in half of P's and all of Q's
    assert universal_count(tops) == 2
    # a protein without mutants at a layer (first) is skipped, not the end: the others still count
    assert universal_count({("R", 2): [], **tops}) == 2


def attributions(rows: list[list[float]]) -> Attributions:
    a = np.array(rows, dtype=np.float64)
    n = len(a)
    return Attributions(mutant=np.array([f"m{i}" for i in range(n)]), attribution=a, abs_delta=np.abs(a),
                        error_attribution=np.zeros(n), total_effect=np.ones(n), completeness_error=np.zeros(n),
                        quadrature_delta=np.zeros(n))


def test_a_universal_count_that_random_top20s_reach_as_often_is_indistinguishable():
    """Every mutant changes exactly the same 20 features: its top-20 is its whole changed set, so random draws
    give the same count every time: observed 20, every null 20, p = 1 (≥ counts ties): indistinguishable."""
    same = [[1.0 + (j % 3)] * 20 + [0.0] * 10 for j in range(3)]
    out = universal_claim({("P", 2): attributions(same), ("Q", 2): attributions(same)}, 20, 0, 0.05)
    assert (out["statistic"], out["null"], out["p"], out["verdict"]) == (20.0, 20.0, 1.0, NULL)


def ablation_table(p_values: list[float], values: list[float], p95: list[float], name: str = "circuit") -> pd.DataFrame:
    n = len(p_values)
    table = pd.DataFrame({column: np.nan for column in TABLES["set_ablation"]}, index=range(n))
    table = table.assign(protein="P", layer=range(2, 2 + 2 * n, 2), set=name, size=4, n_dms=100,
                         delta_rho=values, p_delta_rho=p_values, null_delta_rho_mean=0.0, null_delta_rho_p95=p95)
    return table


def test_set_ablation_claims_are_bonferroni_over_layers():
    """Two layers: smallest p 0.02 × 2 = 0.04 < 0.05: supported; 0.03 × 2 = 0.06: not; a layer above its
    nulls' 95th percentile: not supported."""
    out = ablation_claims(ablation_table([0.02, 0.3], [-0.2, -0.05], [0.1, 0.1]), 0.05)
    assert [r["scope"] for r in out] == ["P", "all"]
    assert out[0]["verdict"] == SUPPORTED and out[0]["p"] == pytest.approx(0.04)
    assert out[0]["statistic"] == pytest.approx(-0.125) and out[0]["claim"] == "set_ablation:circuit"
    assert ablation_claims(ablation_table([0.03, 0.3], [-0.2, -0.05], [0.1, 0.1]), 0.05)[0]["verdict"] == NULL
    above = ablation_claims(ablation_table([0.5, 0.9], [0.2, 0.0], [0.1, 0.1]), 0.05)[0]
    assert above["verdict"] == NOT_SUPPORTED


def test_universal_count_with_min_proteins():
    """Three proteins at layer 2: 1 is consistent in P, Q and R, 5 in Q and R only. min_proteins 3 (or a
    fraction above 2/3) counts 1 alone; 2 (or 0.5: ⌈1.5⌉ = 2) counts both."""
    tops = {("P", 2): [{1}, {1, 2}], ("Q", 2): [{1, 5}, {5}], ("R", 2): [{1, 5}]}
    assert [universal_count(tops, m) for m in (2, 3, 0.5, 0.9, 4)] == [2, 1, 2, 1, 0]


def findings_patches(layer: int, forward: str) -> pd.DataFrame:
    """A patching table of two mutants, each with one real patch and one random control (see patch_table)."""
    return patch_table(layer, [("m0", "real", 0.5), ("m0", "random", 0.125), ("m1", "real", -0.25),
                               ("m1", "random", 0.0625)], forward)


def test_findings_record_the_one_forward_of_their_inputs():
    """Two layers' patches on the fair-esm forward: each claim (peak layer, single features, for P and for all)
    says so; a layer's patches on the other forward are another study, and no table is made of both."""
    from esmsae.pipeline.errors import InputError
    from esmsae.tables.findings import findings

    concentration = pd.DataFrame(columns=TABLES["ig_concentration_mutants"])
    patching = {("P", 1): findings_patches(1, "fair-esm"), ("P", 2): findings_patches(2, "fair-esm")}
    table = findings(patching, concentration, {}, {}, None, n_null=10, seed=0, alpha=0.05)
    assert list(table.columns) == TABLES["findings"]
    assert table[["claim", "scope"]].values.tolist() == [["peak_layer", "P"], ["single_feature_effects", "P"],
                                                         ["peak_layer", "all"], ["single_feature_effects", "all"]]
    assert table["activations"].tolist() == ["fair-esm"] * 4
    patching[("P", 2)] = findings_patches(2, "interprot")
    with pytest.raises(InputError, match=r"^findings: inputs measured on different forwards \(activations "
                                         r"fair-esm, interprot\); a study reads every SAE on one \(config key "
                                         r"sae.activations\)$"):
        findings(patching, concentration, {}, {}, None, n_null=10, seed=0, alpha=0.05)


# -- mutation-testing round (mutation/findings.md): each claim's arithmetic at its bar -----------------------------
def test_row_words_the_p_and_names_the_figure_of_its_claim_kind():
    """The sentence ends with p at 2 significant digits (0.04), or "p undefined" when p is NaN; the figure is
    the claim kind's (the part before ':'), unless one is given; the verdict follows alpha."""
    from esmsae.tables.findings import row

    nan = float("nan")
    out = row("set_ablation:circuit", "P", -0.125, 0.0, "a test", 0.04, nan, 2, "P: a claim", 0.05)
    assert out == {"claim": "set_ablation:circuit", "scope": "P", "statistic": -0.125, "null": 0.0,
                   "test": "a test", "p": 0.04, "p_other": out["p_other"], "n": 2, "verdict": SUPPORTED,
                   "sentence": "P: a claim (p = 0.04)", "figure": "set_ablation.png"}
    assert np.isnan(out["p_other"]) and list(out) == TABLES["findings"][:-1]
    undefined = row("peak_layer", "all", nan, nan, "t", nan, nan, 0, "all: s", 0.05)
    assert (undefined["sentence"], undefined["figure"], undefined["verdict"]) == ("all: s (p undefined)",
                                                                                   "layer_effects.png", NULL)
    given = row("top20_share", "P", 1.0, 0.5, "t", 0.04, 0.9, 5, "s", 0.01, figure="other.png")
    assert (given["figure"], given["verdict"]) == ("other.png", NULL)  # 0.04 is not below alpha 0.01
    assert [row(c, "P", 0, 0, "t", 0.5, 0.5, 1, "s", 0.05)["figure"] for c in
            ("top20_share", "single_feature_effects", "universal_features", "mediated_fraction")] == [
        "ig_concentration.png", "controls.png", "universal_features.png", "mediated_fraction.png"]


def patch_table(layer: int, rows: list[tuple[str, str, float]], forward: str = "fair-esm") -> pd.DataFrame:
    """A patching table from (mutant, control, effect) rows, one site each."""
    return pd.DataFrame([{"mutant": m, "position": "1", "layer": layer, "feature": 0, "control": control,
                          "wt_pre": 0.0, "mut_pre": 1.0, "wt_latent": 0.0, "mut_latent": 1.0, "patched_value": 1.0,
                          "baseline_score": 0.0, "patched_score": effect, "effect": effect, "k": 8, "d_sae": 16,
                          "space": "latent", "activations": forward} for m, control, effect in rows],
                        columns=TABLES["patching"])


def test_patch_values_are_each_mutants_mean_and_max_abs_effect_per_control():
    """Layer 1: m0's real patches 0.5 and −0.375: mean |e| 0.4375, max 0.5; its random ones 0.125 and −0.25:
    0.1875 and 0.25; m1 one real −0.25 and one random 0.0625; m2 only a real 1.0 (random NaN). The noop and
    stable controls (9.0) count nowhere. Layer 2: findings_patches. Rows in order of first appearance."""
    from esmsae.tables.findings import patch_values

    layer1 = patch_table(1, [("m0", "real", 0.5), ("m0", "random", 0.125), ("m0", "real", -0.375),
                             ("m0", "random", -0.25), ("m1", "noop", 9.0), ("m1", "real", -0.25),
                             ("m1", "random", 0.0625), ("m1", "stable", -9.0), ("m2", "real", 1.0)])
    out = patch_values({("P", 1): layer1, ("P", 2): findings_patches(2, "fair-esm")})
    assert list(out.columns) == ["protein", "layer", "mutant", "real_mean", "real_max", "random_mean", "random_max"]
    nan = float("nan")
    expected = [["P", 1, "m0", 0.4375, 0.5, 0.1875, 0.25], ["P", 1, "m1", 0.25, 0.25, 0.0625, 0.0625],
                ["P", 1, "m2", 1.0, 1.0, nan, nan], ["P", 2, "m0", 0.5, 0.5, 0.125, 0.125],
                ["P", 2, "m1", 0.25, 0.25, 0.0625, 0.0625]]
    pd.testing.assert_frame_equal(out, pd.DataFrame(expected, columns=out.columns), check_dtype=False)
    empty = patch_values({})
    assert empty.empty and list(empty.columns) == list(out.columns)
    # the order of first appearance, not sorted: Q before P, and m1 before m0
    later = patch_values({("Q", 3): patch_table(3, [("m1", "real", 0.5), ("m0", "real", 1.0)]),
                          ("P", 1): patch_table(1, [("m0", "random", 0.5), ("m0", "real", 0.25)])})
    assert later[["protein", "layer", "mutant", "real_mean"]].values.tolist() == [
        ["Q", 3, "m0", 1.0], ["Q", 3, "m1", 0.5], ["P", 1, "m0", 0.25]]


def test_mutant_means_average_over_layers_per_protein_and_mutant_in_order_of_appearance():
    """Q's m1 (layers 2, 4: 0.5 and 1.0 → 0.75) first, then P's m1 (0.25) and Q's m0 (a NaN layer skipped: 2.0):
    the same mutant name in two proteins is two units."""
    from esmsae.tables.findings import mutant_means

    frame = pd.DataFrame({"protein": ["Q", "P", "Q", "Q", "Q"], "mutant": ["m1", "m1", "m1", "m0", "m0"],
                          "layer": [2, 2, 4, 2, 4], "x": [0.5, 0.25, 1.0, 2.0, np.nan]})
    out = mutant_means(frame, ["x"])
    assert out.values.tolist() == [["Q", "m1", 0.75], ["P", "m1", 0.25], ["Q", "m0", 2.0]]
    assert list(out.columns) == ["protein", "mutant", "x"]


def peak_values(real: dict[int, dict[str, float]], random: dict[str, float], layer_of_random: int) -> pd.DataFrame:
    """Per-(layer, mutant) values of protein P: real_mean as given, random_mean at one layer (NaN elsewhere)."""
    return pd.DataFrame([{"protein": "P", "layer": layer, "mutant": m, "real_mean": v, "real_max": v,
                          "random_mean": random.get(m, np.nan) if layer == layer_of_random else np.nan,
                          "random_max": np.nan} for layer, by_mutant in real.items() for m, v in by_mutant.items()])


def test_peak_layer_p_is_the_larger_of_its_two_tests_and_p_other_the_smaller():
    """Six mutants. Layer 4 − layer 2 = 1, 2, 1.5, 2.5, 1.25, 2.25 (distinct, all > 0): p 1/64, other 1.
    At layer 4, real − random = 0.5, 1.5, −0.25, 2.5, 1.25, 2.75: ranks 2, 4, (1), 5, 3, 6, T+ = 20, so
    P(T+ ≥ 20) = 2/64 = 1/32 and P(T+ ≤ 20) = 63/64. p = max(1/64, 1/32) = 1/32 (supported at 0.05, not
    at alpha 1/32 itself); p_other = min(1, 63/64). Statistic mean at layer 4 = 16.5/6 = 2.75; null =
    max(next layer's 1.0, random's 8.25/6 = 1.375) = 1.375."""
    at4 = [2.0, 3.0, 2.5, 3.5, 2.25, 3.25]
    random = [1.5, 1.5, 2.75, 1.0, 1.0, 0.5]
    names = [f"m{i}" for i in range(6)]
    frame = peak_values({2: dict.fromkeys(names, 1.0), 4: dict(zip(names, at4, strict=True))},
                        dict(zip(names, random, strict=True)), 4)
    out = peak_layer(frame, "P", 0.05)
    assert (out["p"], out["p_other"], out["n"], out["verdict"]) == (1 / 32, 63 / 64, 6, SUPPORTED)
    assert (out["statistic"], out["null"]) == (2.75, 1.375)
    assert out["test"] == "Wilcoxon (paired, one-sided): l* > next layer and real > random at l*"
    assert out["sentence"] == ("P: peak causal effects at layer 4 (mean |effect| 2.75 vs 1 at layer 2, random "
                               "control 1.38) (p = 0.031)")
    assert peak_layer(frame, "P", 1 / 32)["verdict"] == NULL
    # random above real at layer 4 for every mutant: p = max(1/64, 1) = 1, p_other = min(1, 1/64) = 1/64
    beaten = peak_layer(peak_values({2: dict.fromkeys(names, 1.0), 4: dict(zip(names, at4, strict=True))},
                                    dict.fromkeys(names, 4.0), 4), "P", 0.05)
    assert (beaten["p"], beaten["p_other"], beaten["null"], beaten["verdict"]) == (1.0, 1 / 64, 4.0, NOT_SUPPORTED)


def test_peak_layer_with_one_test_undefined():
    """No random control at ℓ*: its test is NaN, so p is NaN (both tests are needed) and p_other is the layer
    test's other way (1.0): indistinguishable. Layers with no mutant in common: the layer test is NaN
    (n = 0) and random above real at ℓ* for all six makes it not supported (p_other 1/64). The tie
    2 vs 4 (both mean 1.5) picks the lower layer."""
    names = [f"m{i}" for i in range(6)]
    at4 = dict(zip(names, [2.0, 3.0, 2.5, 3.5, 2.25, 3.25], strict=True))
    no_random = peak_layer(peak_values({2: dict.fromkeys(names, 1.0), 4: at4}, {}, 4), "P", 0.05)
    assert np.isnan(no_random["p"]) and no_random["p_other"] == 1.0 and no_random["verdict"] == NULL
    assert no_random["n"] == 6 and no_random["sentence"].endswith("random control nan) (p undefined)")
    apart = peak_layer(peak_values({2: {"other": 1.0}, 4: at4}, dict.fromkeys(names, 4.0), 4), "P", 0.05)
    assert np.isnan(apart["p"]) and apart["p_other"] == 1 / 64 and apart["n"] == 0
    assert apart["verdict"] == NOT_SUPPORTED
    tie = peak_layer(peak_values({2: {"a": 1.0, "b": 2.0}, 4: {"a": 2.0, "b": 1.0}, 6: {"a": 0.5, "b": 0.25}},
                                 {}, 2), "P", 0.05)
    assert tie["sentence"].startswith("P: peak causal effects at layer 2 (mean |effect| 1.5 vs 1.5 at layer 4")
    four = peak_layer(peak_values({2: {"a": 0.5}, 4: {"a": 0.5}, 6: {"a": 1.5}, 8: {"a": 1.5}}, {}, 6), "P", 0.05)
    assert four["sentence"].startswith("P: peak causal effects at layer 6 (mean |effect| 1.5 vs 1.5 at layer 8")
    lone = peak_layer(peak_values({2: {"a": 1.0}, 4: {"a": 2.0}}, {"a": 0.5}, 4), "P", 0.05)
    assert np.isnan(lone["p"]) and np.isnan(lone["p_other"]) and lone["n"] == 1  # one pair: neither test exists
    one = peak_layer(peak_values({3: at4}, {}, 3), "Q", 0.05)
    assert (one["claim"], one["scope"]) == ("peak_layer", "Q")
    assert np.isnan(one["statistic"]) and np.isnan(one["null"]) and one["n"] == 0 and one["verdict"] == NULL
    assert one["test"] == "Wilcoxon (paired, one-sided)"
    assert one["sentence"] == "Q: peak causal effects at one layer (fewer than two patching layers) (p undefined)"


def changed_attributions(tops: list[list[int]], changed: list[list[int]], d: int = 8,
                         forward: str | None = None) -> Attributions:
    """Mutants whose nonzero A are `tops` (A = 1) and whose changed set (|Δ| > 0) is `changed`, by hand."""
    n = len(tops)
    a, delta = np.zeros((n, d)), np.zeros((n, d))
    for m in range(n):
        a[m, tops[m]] = 1.0
        delta[m, changed[m]] = 1.0
    return Attributions(mutant=np.array([f"m{i}" for i in range(n)]), attribution=a, abs_delta=delta,
                        error_attribution=np.zeros(n), total_effect=np.ones(n), completeness_error=np.zeros(n),
                        quadrature_delta=np.zeros(n), activations=forward)


def test_universal_claim_against_random_draws_from_the_changed_set_by_hand():
    """(A nonzero outside the changed set is not physical; here it makes every draw known.)
    P and Q, three mutants each, top sets {0}, {0}, {0} (0 is universal: observed 1); the changed sets
    {1, 2}, {3, 4}, {5, 6} are disjoint, so each mutant draws one feature that no other draws: 1 of 3 is
    below half, every null count is 0. p = (1 + 0) / (1 + n_null): 1/21 < 0.05 with 20 draws, 1/20 = 0.05
    (not below) with 19; p_other = 1. With min_proteins 3 nothing is universal, observed or drawn."""
    tops, changed = [[0], [0], [0]], [[1, 2], [3, 4], [5, 6]]
    results = {("P", 2): changed_attributions(tops, changed), ("Q", 2): changed_attributions(tops, changed)}
    out = universal_claim(results, 20, 0, 0.05)
    assert (out["claim"], out["scope"], out["statistic"], out["null"]) == ("universal_features", "all", 1.0, 0.0)
    assert (out["p"], out["p_other"], out["n"], out["verdict"]) == (1 / 21, 1.0, 6, SUPPORTED)
    assert out["test"] == "empirical, 20 random top-20 draws"
    assert out["sentence"] == ("all: universal features across proteins (1 vs 0 with random top-20s) "
                               "(p = 0.048)")
    at_bar = universal_claim(results, 19, 0, 0.05)
    assert (at_bar["p"], at_bar["verdict"]) == (1 / 20, NULL)
    three = universal_claim(results, 20, 0, 0.05, min_proteins=3)
    assert (three["statistic"], three["null"], three["p"], three["p_other"]) == (0.0, 0.0, 1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no null: NaN, not the mean of an empty list
        none = universal_claim(results, 0, 0, 0.05)
    assert none["statistic"] == 1.0 and np.isnan(none["null"]) and np.isnan(none["p"]) and none["verdict"] == NULL


def test_universal_claim_draws_as_many_as_the_top_set_holds_and_no_more_than_the_changed_set():
    """P: m0 top {0}, changed {1, 2, 3}: it draws one of them; m1 top {0}, changed {4}: draws 4. Two mutants,
    so a feature drawn once is in half of them: P's drawn universal candidates are {d, 4}. Q: one mutant,
    top {1, 2, 3}, changed {1, 2, 3}: draws all three. Observed: 0 (P's {0} vs Q's {1, 2, 3}); every null
    draw shares exactly d with Q: 1. So p = (1 + 20) / 21 = 1, p_other = (1 + 0) / 21: not supported.
    R's mutant has two nonzero A ({0, 7}) but one changed feature ({5}): it draws one, not two."""
    results = {("P", 2): changed_attributions([[0], [0]], [[1, 2, 3], [4]]),
               ("Q", 2): changed_attributions([[1, 2, 3]], [[1, 2, 3]]),
               ("R", 4): changed_attributions([[0, 7]], [[5]])}
    out = universal_claim(results, 20, 3, 0.05)
    assert (out["statistic"], out["null"], out["p"], out["p_other"]) == (0.0, 1.0, 1.0, 1 / 21)
    assert (out["n"], out["verdict"]) == (4, NOT_SUPPORTED)
    three = universal_claim(results, 20, 3, 0.05, min_proteins=3)  # the draws meet the same bar: none
    assert (three["statistic"], three["null"], three["p"], three["p_other"]) == (0.0, 0.0, 1.0, 1.0)


def test_universal_claim_is_seeded():
    """Random draws: the same seed gives the same null (and so the same p), run after run."""
    changed = [[1, 2, 3, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7, 8], [1, 3, 5, 7, 9, 11, 13]]
    results = {("P", 2): changed_attributions([[1, 2], [2, 3], [3, 5]], changed, d=16),
               ("Q", 2): changed_attributions([[1, 2], [3, 4], [5, 6]], changed, d=16)}
    first, again = universal_claim(results, 50, 11, 0.05), universal_claim(results, 50, 11, 0.05)
    assert (first["null"], first["p"], first["p_other"]) == (again["null"], again["p"], again["p_other"])
    assert 0 < first["null"] < 7  # some draws share features and some do not: the draws are random


def ablation_frame(rows: list[dict]) -> pd.DataFrame:
    """A set_ablation table from partial rows (every other column NaN, the forward fair-esm)."""
    table = pd.DataFrame([{column: np.nan for column in TABLES["set_ablation"]} | {"activations": "fair-esm"} | r
                          for r in rows], columns=TABLES["set_ablation"])
    return table


def test_set_ablation_claims_without_dms_use_rho_clean_ablated_and_pool_over_proteins():
    """Circuit at P layers 2, 4 with 2 and 3 DMS singles (one below 3): ρ(clean, ablated) is the statistic,
    mean (0.5 + 0.75) / 2 = 0.625 vs nulls' 0.875, smallest p 0.02 × 2 layers = 0.04, sizes 2 and 5: median
    3.5, shown as 3. Q layer 2 has 3 DMS singles: Δρ; its p 0.6 × 1; pooled (all 3 rows): some row has
    n_dms 2, so ρ(clean, ablated) over 3 rows: p = 0.02 × 3 = 0.06, not supported."""
    rows = [{"protein": "P", "layer": 2, "set": "circuit", "size": 2, "n_dms": 2, "rho_clean_ablated": 0.5,
             "p_rho_clean_ablated": 0.02, "null_rho_clean_ablated_mean": 0.75, "null_rho_clean_ablated_p95": 0.9,
             "delta_rho": -9.0, "p_delta_rho": 0.001, "null_delta_rho_mean": 9.0, "null_delta_rho_p95": 9.0},
            {"protein": "P", "layer": 4, "set": "circuit", "size": 5, "n_dms": 3, "rho_clean_ablated": 0.75,
             "p_rho_clean_ablated": 0.5, "null_rho_clean_ablated_mean": 1.0, "null_rho_clean_ablated_p95": 1.0,
             "delta_rho": -9.0, "p_delta_rho": 0.001, "null_delta_rho_mean": 9.0, "null_delta_rho_p95": 9.0},
            {"protein": "Q", "layer": 2, "set": "circuit", "size": 4, "n_dms": 3, "rho_clean_ablated": 0.25,
             "p_rho_clean_ablated": 0.3, "null_rho_clean_ablated_mean": 0.5, "null_rho_clean_ablated_p95": 0.75,
             "delta_rho": -0.5, "p_delta_rho": 0.6, "null_delta_rho_mean": -0.25, "null_delta_rho_p95": -0.5}]
    out = ablation_claims(ablation_frame(rows), 0.05)
    assert [(r["claim"], r["scope"], r["n"]) for r in out] == [("set_ablation:circuit", "P", 2),
                                                              ("set_ablation:circuit", "Q", 1),
                                                              ("set_ablation:circuit", "all", 3)]
    p, q, pooled = out
    assert (p["statistic"], p["null"], p["p"], p["verdict"]) == (0.625, 0.875, 0.04, SUPPORTED)
    assert np.isnan(p["p_other"]) and p["test"] == "empirical vs frequency-matched sets, Bonferroni over layers"
    assert p["sentence"] == ("P: removing the circuit set (|A| 3) changes ρ(clean, ablated) by more than "
                             "comparable random sets (0.625 vs 0.875, 2 layers) (p = 0.04)")
    assert p["figure"] == "set_ablation.png"
    # Q: Δρ −0.5 is exactly its nulls' 95th percentile, not above it: p_other stays NaN
    assert (q["statistic"], q["null"], q["p"], q["verdict"]) == (-0.5, -0.25, 0.6, NULL) and np.isnan(q["p_other"])
    assert "changes Δρ with DMS by more" in q["sentence"]
    assert pooled["p"] == pytest.approx(0.06) and pooled["verdict"] == NULL
    assert pooled["statistic"] == 0.5 and pooled["null"] == pytest.approx(2.25 / 3)
    q_first = ablation_claims(ablation_frame(rows[2:] + rows[:2]), 0.05)  # proteins in the order they appear
    assert [r["scope"] for r in q_first] == ["Q", "P", "all"] and q_first[1]["p"] == 0.04


def test_set_ablation_p_is_capped_at_1_skips_nan_layers_and_reads_above_the_p95_as_the_other_way():
    """Universal (first, kept first) at layers 2, 4, 6: p NaN, 0.5, 0.75 → min 0.5 × 3 = 1.5, capped at 1;
    layer 6's Δρ 0.3 is above its p95 0.25: p_other 0, not supported. Identity: every p NaN → p NaN, and no
    layer above its p95: indistinguishable."""
    rows = [{"protein": "P", "layer": layer, "set": "universal", "size": 3, "n_dms": 10, "delta_rho": value,
             "p_delta_rho": p, "null_delta_rho_mean": 0.0, "null_delta_rho_p95": 0.25}
            for layer, value, p in ((2, 0.0, np.nan), (4, 0.1, 0.5), (6, 0.3, 0.75))]
    rows += [{"protein": "P", "layer": 2, "set": "identity", "size": 0, "n_dms": 10, "delta_rho": np.nan,
              "p_delta_rho": np.nan, "null_delta_rho_mean": np.nan, "null_delta_rho_p95": np.nan}]
    out = ablation_claims(ablation_frame(rows), 0.05)
    assert [(r["claim"], r["scope"]) for r in out] == [("set_ablation:universal", "P"),
                                                      ("set_ablation:universal", "all"),
                                                      ("set_ablation:identity", "P"),
                                                      ("set_ablation:identity", "all")]
    assert (out[0]["p"], out[0]["p_other"], out[0]["verdict"], out[0]["n"]) == (1.0, 0.0, NOT_SUPPORTED, 3)
    assert out[0]["statistic"] == pytest.approx(0.4 / 3)
    identity = out[2]
    assert np.isnan(identity["p"]) and np.isnan(identity["p_other"]) and identity["verdict"] == NULL
    assert identity["sentence"].endswith("(|A| 0) changes Δρ with DMS by more than comparable random sets (nan vs "
                                         "nan, 1 layers) (p undefined)")


def concentration_table(forward: str = "fair-esm") -> pd.DataFrame:
    """Top-20 shares of P's and Q's mutants m0..m2 at layers 2 and 4 (null 0.5 throughout). Mean over layers:
    P 0.5625, 0.625, 0.75 and Q 0.8125, 0.875, 0.9375, each above 0.5 by a different amount."""
    shares = {("P", 2): [0.5, 0.5, 0.75], ("P", 4): [0.625, 0.75, 0.75],
              ("Q", 2): [0.75, 0.875, 1.0], ("Q", 4): [0.875, 0.875, 0.875]}
    rows = [{"protein": p, "layer": layer, "mutant": f"m{m}", "top20_share": v, "top20_share_null": 0.5,
             "activations": forward} for (p, layer), values in shares.items() for m, v in enumerate(values)]
    return pd.DataFrame(rows).reindex(columns=TABLES["ig_concentration_mutants"])


def shares_table(layer_up: int, fractions: list[float], forward: str = "fair-esm") -> pd.DataFrame:
    """Graph shares of mutants m0.. at one layer pair: one upstream feature each, effect 1, held effect 1 − f
    (mediated fraction f), random hold 0.75 (null fraction 0.25); and m5 whose upstream effect is 0 (NaN)."""
    rows = [{"mutant": f"m{m}", "layer_up": layer_up, "up": 0, "effect": 1.0, "held_effect": 1.0 - f,
             "null_held_effect": 0.75, "layer_down": layer_up + 2, "activations": forward}
            for m, f in enumerate(fractions)]
    rows.append({"mutant": "m5", "layer_up": layer_up, "up": 0, "effect": 0.0, "held_effect": 0.0,
                 "null_held_effect": 0.0, "layer_down": layer_up + 2, "activations": forward})
    return pd.DataFrame(rows).reindex(columns=TABLES["graph_shares"])


def findings_inputs(forward: str = "fair-esm") -> dict:
    tops, changed = [[0], [0], [0]], [[1, 2], [3, 4], [5, 6]]
    return {"patching": {(p, layer): findings_patches(layer, forward) for p in ("P", "Q") for layer in (1, 2)},
            "concentration": concentration_table(forward),
            "results": {(p, 2): changed_attributions(tops, changed, forward=forward) for p in ("P", "Q")},
            "shares": {("P", 2): shares_table(2, [0.5, 0.75, 0.5, 0.625, 0.875], forward),
                       ("P", 4): shares_table(4, [0.5, 0.5, 1.0, 1.0, 1.0], forward)},
            "ablation": ablation_frame([{"protein": "P", "layer": 2, "set": "circuit", "size": 2, "n_dms": 5,
                                         "delta_rho": -0.25, "p_delta_rho": 0.01, "null_delta_rho_mean": 0.0,
                                         "null_delta_rho_p95": 0.125, "activations": forward}])}


def test_findings_by_hand_every_claim_per_protein_then_pooled_over_protein_mutant_pairs():
    """Patching (findings_patches at layers 1 and 2, P and Q): single features, P's mutants' largest |real|
    0.5, 0.25 vs |random| 0.125, 0.0625 (mean over the two layers): statistic 0.375, null 0.09375, both
    differences > 0, n = 2, exact p 1/4; pooled the units are (protein, mutant): n = 4. Top-20 share: P's 3
    mutants above their null (p 1/8, statistic 1.9375/3), Q's 3 too (2.625/3); pooled 6 units: p 1/64,
    supported. Mediated fraction (P, two layer pairs): means 0.5, 0.625, 0.75, 0.8125, 0.9375 vs 0.25
    (m5's NaN dropped): n 5, p 1/32, statistic 3.625/5. Universal: 1 vs 0 over 20 draws, p 1/21. Set
    ablation: p 0.01 × 1 layer."""
    from esmsae.tables.findings import findings

    i = findings_inputs()
    table = findings(i["patching"], i["concentration"], i["results"], i["shares"], i["ablation"], n_null=20, seed=0,
                     alpha=0.05)
    claims = ["peak_layer", "single_feature_effects", "top20_share"]
    assert table[["claim", "scope"]].values.tolist() == (
        [[c, "P"] for c in [*claims, "mediated_fraction"]] + [[c, "Q"] for c in claims]
        + [[c, "all"] for c in [*claims, "mediated_fraction"]]
        + [["universal_features", "all"], ["set_ablation:circuit", "P"], ["set_ablation:circuit", "all"]])
    assert table["activations"].tolist() == ["fair-esm"] * len(table)
    by = {(r.claim, r.scope): r for r in table.itertuples()}
    single = by[("single_feature_effects", "P")]
    assert (single.statistic, single.null, single.p, single.p_other, single.n) == (0.375, 0.09375, 0.25, 1.0, 2)
    assert single.sentence == ("P: single features move the score more than random perturbations of their size "
                               "(largest |effect|) (0.375 vs 0.0938 over 2 mutants) (p = 0.25)")
    assert by[("single_feature_effects", "all")].n == 4 and by[("single_feature_effects", "all")].statistic == 0.375
    top_p, top_q, top_all = (by[("top20_share", s)] for s in ("P", "Q", "all"))
    assert (top_p.statistic, top_p.null, top_p.p, top_p.n, top_p.verdict) == (
        pytest.approx(1.9375 / 3), 0.5, 1 / 8, 3, NULL)
    assert (top_q.statistic, top_q.p, top_q.n) == (pytest.approx(2.625 / 3), 1 / 8, 3)
    assert (top_all.statistic, top_all.p, top_all.n, top_all.verdict) == (
        pytest.approx(4.5625 / 6), 1 / 64, 6, SUPPORTED)
    assert top_all.test == "Wilcoxon (paired, one-sided)" and top_all.figure == "ig_concentration.png"
    assert top_p.sentence == ("P: the top 20 features carry more of the IG attribution than the SAE's sparsity alone "
                              "gives (top-20 share of D) (0.646 vs 0.5 over 3 mutants) (p = 0.12)")
    assert by[("mediated_fraction", "P")].sentence == (
        "P: an upstream feature's effect flows through its top downstream features more than through random ones "
        "(0.725 vs 0.25 over 5 mutants) (p = 0.031)")
    for scope in ("P", "all"):
        mediated = by[("mediated_fraction", scope)]
        assert (mediated.statistic, mediated.null, mediated.p, mediated.n, mediated.verdict) == (
            pytest.approx(0.725), 0.25, 1 / 32, 5, SUPPORTED)
    universal = by[("universal_features", "all")]
    assert (universal.statistic, universal.null, universal.p, universal.n) == (1.0, 0.0, 1 / 21, 6)
    assert (by[("set_ablation:circuit", "P")].p, by[("set_ablation:circuit", "P")].verdict) == (0.01, SUPPORTED)
    peak = by[("peak_layer", "P")]  # both layers 0.375 on average: layer 1 first, every layer difference 0
    assert (peak.statistic, peak.null, peak.n, peak.p_other) == (0.375, 0.375, 2, 1.0) and np.isnan(peak.p)
    assert peak.sentence.startswith("P: peak causal effects at layer 1 (")
    three = findings(i["patching"], i["concentration"], i["results"], i["shares"], None, n_null=20, seed=0,
                     alpha=0.05, min_proteins=3)
    assert three["claim"].tolist()[-1] == "universal_features"
    assert three.iloc[-1]["statistic"] == 0.0  # two proteins cannot meet min_proteins 3
    empty = findings(i["patching"], i["concentration"], {}, {}, i["ablation"].iloc[:0], n_null=20, seed=0,
                     alpha=0.05)
    assert "universal_features" not in empty["claim"].tolist()
    assert not any(c.startswith("set_ablation") for c in empty["claim"])
    nothing = findings({}, i["concentration"].iloc[:0], {}, {}, None, n_null=20, seed=0, alpha=0.05)
    assert nothing.empty and list(nothing.columns) == TABLES["findings"]


def random_results(forward: str = "fair-esm") -> dict:
    """IG results whose null draws are random (changed sets of 7 that overlap, top sets of 2)."""
    changed = [[1, 2, 3, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7, 8], [1, 3, 5, 7, 9, 11, 13]]
    return {("P", 2): changed_attributions([[1, 2], [2, 3], [3, 5]], changed, d=16, forward=forward),
            ("Q", 2): changed_attributions([[1, 2], [3, 4], [5, 6]], changed, d=16, forward=forward)}


def test_findings_draw_the_universal_null_with_the_seed_given():
    """The universal row is universal_claim's with the same seed (the draws are random here)."""
    from esmsae.tables.findings import findings

    i, results = findings_inputs(), random_results()
    table = findings(i["patching"], i["concentration"], results, {}, None, n_null=40, seed=5, alpha=0.05)
    expected = universal_claim(results, 40, 5, 0.05)
    got = table[table["claim"] == "universal_features"].iloc[0]
    assert (got["statistic"], got["null"], got["p"], got["p_other"]) == (
        expected["statistic"], expected["null"], expected["p"], expected["p_other"])


@pytest.mark.parametrize("other", ["concentration", "results", "shares", "ablation"])
def test_findings_refuse_any_input_measured_on_another_forward(other):
    from esmsae.pipeline.errors import InputError
    from esmsae.tables.findings import findings

    i = findings_inputs()
    i[other] = findings_inputs("interprot")[other]
    with pytest.raises(InputError, match=r"activations fair-esm, interprot"):
        findings(i["patching"], i["concentration"], i["results"], i["shares"], i["ablation"], n_null=5, seed=0,
                 alpha=0.05)


def test_tabulate_findings_reads_every_input_and_writes_the_table(tmp_path):
    """The rule's files: the same rows as findings() on the frames (claims, verdicts and values), with
    n_null, alpha and min_proteins passed on; without an ablation file, no set_ablation rows."""
    from esmsae.pipeline.columns import read_table
    from esmsae.pipeline.io import write_csv
    from esmsae.tables.findings import findings, tabulate_findings

    i = findings_inputs()
    paths: dict = {"patching": {}, "ig": {}, "shares": {}}
    for (p, layer), frame in i["patching"].items():
        write_csv(frame, paths["patching"].setdefault((p, layer), tmp_path / f"patch_{p}_{layer}.csv"))
    for (p, layer), result in i["results"].items():
        write_ig(result, layer, paths["ig"].setdefault((p, layer), tmp_path / f"ig_{p}_{layer}.npz"))
    for (p, layer), frame in i["shares"].items():
        write_csv(frame, paths["shares"].setdefault((p, layer), tmp_path / f"shares_{p}_{layer}.csv"))
    write_csv(i["concentration"], tmp_path / "conc.csv")
    write_csv(i["ablation"], tmp_path / "ablation.csv")
    out = tmp_path / "findings.csv"
    tabulate_findings(paths["patching"], tmp_path / "conc.csv", paths["ig"], paths["shares"], tmp_path / "ablation.csv",
                      n_null=19, seed=0, alpha=0.04, out=out)
    written = read_table(out, "findings")
    expected = findings(i["patching"], i["concentration"], i["results"], i["shares"], i["ablation"], n_null=19,
                        seed=0, alpha=0.04)
    assert written[["claim", "scope", "verdict", "n"]].values.tolist() == expected[
        ["claim", "scope", "verdict", "n"]].values.tolist()
    np.testing.assert_allclose(written[["statistic", "null", "p"]].to_numpy(dtype=float),
                               expected[["statistic", "null", "p"]].to_numpy(dtype=float))
    universal = written[written["claim"] == "universal_features"].iloc[0]
    assert (universal["statistic"], universal["p"], universal["test"]) == (1.0, 1 / 20,
                                                                           "empirical, 19 random top-20 draws")
    mediated = written[written["claim"] == "mediated_fraction"].iloc[0]
    assert mediated["p"] == 1 / 32 and mediated["verdict"] == SUPPORTED  # 1/32 < alpha 0.04
    top = written[(written["claim"] == "top20_share") & (written["scope"] == "all")].iloc[0]
    assert top["verdict"] == SUPPORTED and written["activations"].tolist() == ["fair-esm"] * len(written)
    tabulate_findings(paths["patching"], tmp_path / "conc.csv", paths["ig"], paths["shares"], None, n_null=19,
                      seed=0, alpha=0.02, out=out, min_proteins=3)
    written = read_table(out, "findings")
    assert not written["claim"].str.startswith("set_ablation").any()
    assert written[written["claim"] == "universal_features"].iloc[0]["statistic"] == 0.0
    assert written[written["claim"] == "mediated_fraction"].iloc[0]["verdict"] == NULL  # 1/32 > alpha 0.02
    # random draws: the rule's universal row is universal_claim's with the seed given
    results = random_results()
    for (p, layer), result in results.items():
        write_ig(result, layer, tmp_path / f"ig_{p}_{layer}.npz")
    tabulate_findings(paths["patching"], tmp_path / "conc.csv", paths["ig"], paths["shares"], None, n_null=40,
                      seed=5, alpha=0.05, out=out)
    got = read_table(out, "findings").set_index("claim").loc["universal_features"]
    expected = universal_claim(results, 40, 5, 0.05)
    assert (got["null"], got["p"], got["p_other"]) == (expected["null"], expected["p"], expected["p_other"])


def write_ig(result: Attributions, layer: int, path) -> None:
    dataclasses.replace(result, steps=8, rule="gauss-legendre", space="latent", k=8, d_sae=result.attribution.shape[1],
                        error_node=True, layer=layer).write(path)
