"""Concentration, consistency, universality and circuit-size tables against hand-made attributions.

METHOD.md "Concentration and universality": every statistic over the changed set C (|Δ| > 0),
the error node in the denominator, beside a null with |Δ| in place of |A|; uncertainty with the
mutant as the unit. Every expected number below is worked out by hand in a comment, or computed
independently with numpy/scipy in the test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from esmsae.analyses.arrays import Attributions
from esmsae.config.settings import CircuitSizeSettings
from esmsae.pipeline.columns import (
    CONCENTRATION_COLUMNS,
    CONSISTENCY_COLUMNS,
    SAE_SETTINGS,
    SIZE_COLUMNS,
    TABLES,
    read_table,
)
from esmsae.pipeline.errors import InputError
from esmsae.tables.circuits import (
    circuit_sizes,
    circuit_sizes_from_curves,
    minimal_circuits,
    minimal_size,
    negligible,
    tabulate_circuit_sizes,
)
from esmsae.tables.ig import (
    checked,
    concentration_by_mutant,
    feature_consistency,
    ig_concentration,
    mutant_concentration,
    tabulate_attributions,
    tabulate_top_features,
    top_n_features,
    universal_features,
)
from esmsae.tables.statistics import gini, k90, mean_sem, spearman, top_share, wilcoxon_p
from tests.attribution_cases import CASES, D_SAE, NAN, case_result, planted, result, sizes_frame, write_labels

STATS = ["n_changed", "top20_share", "top20_share_null", "error_share", "k90", "k90_null", "gini", "gini_null"]


def assert_stats(got, expected):
    for stat in STATS:
        if math.isnan(expected[stat]):
            assert math.isnan(got[stat]), stat
        else:
            assert got[stat] == pytest.approx(expected[stat], abs=1e-12), stat


# --- the statistics --------------------------------------------------------------------------------------------------

def test_gini_known_values():
    # Standard form Σ(2i − n − 1) x_(i) / (n Σx): bounded by (n − 1)/n.
    assert gini(np.array([1.0, 1.0, 1.0, 1.0])) == 0.0
    assert gini(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)
    assert gini(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.75)  # order does not matter
    assert gini(np.zeros(5)) == 0.0
    assert gini(np.r_[np.zeros(99), 7.0]) == pytest.approx(0.99)
    # [0, 0, 1, 3]: (1·1 + 3·3) / (4·4) = 0.625
    assert gini(np.array([3.0, 0.0, 1.0, 0.0])) == pytest.approx(0.625)
    # [1..25]: Σ(2i − n − 1)i = n(n + 1)(n − 1)/6 over n·n(n + 1)/2 → (n − 1)/(3n) = 24/75
    assert gini(np.arange(1.0, 26.0)) == pytest.approx(24 / 75)
    assert np.isnan(gini(np.array([])))
    with pytest.raises(ValueError, match="non-negative"):
        gini(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="finite"):
        gini(np.array([1.0, np.nan]))


def test_top_share():
    assert top_share(np.ones(22)) == pytest.approx(20 / 22)
    assert top_share(np.array([4.0, 1.0, 3.0, 2.0]), n=2) == pytest.approx(0.7)
    assert top_share(np.array([-4.0, 1.0, 3.0, 2.0]), n=1) == pytest.approx(0.4)  # absolute values
    assert top_share(np.array([5.0, 0.0]), n=20) == 1.0
    assert np.isnan(top_share(np.zeros(10)))
    with pytest.raises(ValueError):
        top_share(np.ones(3), n=0)


def test_k90_by_hand():
    assert k90(np.array([4.0, 3.0, 2.0, 1.0])) == 3  # bar 9 = 4 + 3 + 2: reaching it exactly counts
    assert k90(np.array([1.0, -3.0, 4.0, -2.0])) == 3  # absolute values, any order
    assert k90(np.array([5.0, 4.0, 1.0])) == 2  # 5 + 4 = 9 = 0.9 · 10
    assert k90(np.array([5.0, 3.9, 1.1])) == 3  # 8.9 < 9
    assert k90(np.array([0.45, 0.45, 0.1])) == 2  # 0.9 of 1.0 reached exactly, in floating point
    assert k90(np.ones(10)) == 9  # ties: 9 of 10 equal values are 0.9 of the sum
    assert k90(np.array([2.0, 2.0, 1.0])) == 3  # 4 < 4.5
    assert k90(np.array([3.0, 3.0, 3.0, 1.0])) == 3  # 9 of 10
    assert k90(np.array([7.0])) == 1
    assert k90(np.array([7.0, 0.0, 0.0])) == 1
    assert k90(np.array([4.0, 3.0, 2.0, 1.0]), share=0.5) == 2  # 4 < 5 ≤ 7
    assert np.isnan(k90(np.zeros(4)))
    assert np.isnan(k90(np.array([])))


def test_mean_sem():
    mean, sem = mean_sem(np.array([1.0, 2.0, 3.0, 4.0]))
    # deviations ±0.5, ±1.5: Σ² = 5, std = √(5/3), sem = √(5/3)/√4
    assert mean == 2.5 and sem == pytest.approx(math.sqrt(5 / 3) / 2, abs=1e-15)
    mean, sem = mean_sem(np.array([5.0]))
    assert mean == 5.0 and np.isnan(sem)
    assert all(np.isnan(mean_sem(np.array([]))))
    mean, sem = mean_sem(np.array([1.0, np.nan, 3.0, np.inf]))  # only finite values count
    assert mean == 2.0 and sem == pytest.approx(1.0)  # std √2, over √2
    assert mean_sem(np.array([0.5, 0.5, 0.5])) == (0.5, 0.0)


def test_wilcoxon_p():
    # All three positive, n = 3: exact two-sided p = 2 · P(W+ = 6) = 2/8.
    assert wilcoxon_p(np.array([0.4, 1.0, 0.1])) == pytest.approx(0.25)
    rng = np.random.default_rng(7)
    d = rng.normal(0.3, 1.0, size=12)
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert wilcoxon_p(np.r_[d, np.nan]) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert wilcoxon_p(np.array([0.3, 0.0, -0.1, 0.7])) == pytest.approx(
        stats.wilcoxon([0.3, 0.0, -0.1, 0.7]).pvalue, rel=1e-12)
    # Zeros: scipy's default (zero_method "wilcox", zeros dropped), which matters in the normal approximation.
    with_zeros = np.r_[np.zeros(5), np.random.default_rng(1).normal(0.3, 1.0, size=60)]
    assert wilcoxon_p(with_zeros) == pytest.approx(stats.wilcoxon(with_zeros[5:]).pvalue, rel=1e-12)
    for nan_case in ([], [0.5], [0.0, 0.0, 0.0], [np.nan, 0.5], [np.nan, np.nan]):
        assert np.isnan(wilcoxon_p(np.array(nan_case, dtype=np.float64))), nan_case


# --- mutant_concentration --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_mutant_concentration_cases(name):
    attribution, error, abs_delta, expected = CASES[name]
    assert_stats(mutant_concentration(np.array(attribution), error, np.array(abs_delta, dtype=float)), expected)


def test_mutant_concentration_leaves_out_features_outside_the_changed_set():
    # As "four", plus feature 4 with A = 5 but |Δ| = 0: outside C, so it is in neither D nor the Gini
    # (with it: D = 25, share 0.6, k90 3 of 15, Gini over 5 values).
    attribution, error, abs_delta, expected = CASES["four"]
    attribution = np.array(attribution)
    attribution[4] = 5.0
    assert_stats(mutant_concentration(attribution, error, np.array(abs_delta, dtype=float)), expected)


def test_mutant_concentration_error_node_in_the_denominator():
    # 25 changed features, |A| = 1 each, |Δ| = 1..25.
    # No error: D = 25, top-20 share 20/25; error 5: D = 30, share 20/30, error share 5/30.
    # k90: 0.9 · 25 = 22.5 → 23. Null: top-20 of 1..25 = 325 − 15 = 310 of 325; k90: the top m sum
    # to m(51 − m)/2, 289 < 292.5 ≤ 297 → 18; Gini of 1..25 = 24/75.
    a, delta = np.ones(25), np.arange(1.0, 26.0)
    without = mutant_concentration(a, 0.0, delta)
    with_error = mutant_concentration(a, -5.0, delta)
    assert without["top20_share"] == pytest.approx(0.8) and without["error_share"] == 0.0
    assert with_error["top20_share"] == pytest.approx(2 / 3) and with_error["error_share"] == pytest.approx(1 / 6)
    for out in (without, with_error):
        assert out["n_changed"] == 25 and out["k90"] == 23 and out["gini"] == 0.0
        assert out["top20_share_null"] == pytest.approx(310 / 325)
        assert out["k90_null"] == 18 and out["gini_null"] == pytest.approx(24 / 75)
    assert mutant_concentration(a, 5.0, delta, n=5)["top20_share"] == pytest.approx(5 / 30)
    assert mutant_concentration(a, 5.0, delta, n=5)["top20_share_null"] == pytest.approx(115 / 325)
    with pytest.raises(ValueError, match="positive integer"):
        mutant_concentration(a, 0.0, delta, n=0)


def test_mutant_concentration_error_only():
    # C = {0, 1} with A = 0 there and A_err = 2: D = 2, share 0, error share 1, no k90 (Σ|A| = 0),
    # Gini of [0, 0] is 0; null [1, 3] as in "two". Nothing changed but an error: share 0, error share 1.
    out = mutant_concentration(np.zeros(4), 2.0, np.array([1.0, 3.0, 0.0, 0.0]))
    assert_stats(out, dict(n_changed=2, top20_share=0.0, top20_share_null=1.0, error_share=1.0, k90=NAN,
                           k90_null=2, gini=0.0, gini_null=0.25))
    out = mutant_concentration(np.zeros(4), 2.0, np.zeros(4))
    assert_stats(out, dict(n_changed=0, top20_share=0.0, top20_share_null=NAN, error_share=1.0, k90=NAN,
                           k90_null=NAN, gini=NAN, gini_null=NAN))


# --- concentration_by_mutant and ig_concentration --------------------------------------------------------------------

def concentration_results():
    return {
        ("Q", 4): result(np.zeros((0, 6)), 4, k=16, d_sae=6, space="pre", activations="fair-esm"),
        ("P", 2): case_result(["four", "two", "one"], 2, completeness=[0.1, 0.6, 0.5], total=[-1.0, 0.5, 2.0]),
        ("P", 1): case_result(["four", "empty"], 1, completeness=[0.2, np.nan]),
    }


def test_concentration_by_mutant_by_hand():
    table = concentration_by_mutant(concentration_results())
    assert list(table.columns) == TABLES["ig_concentration_mutants"]
    assert list(zip(table["protein"], table["layer"], table["mutant"], strict=True)) == [
        ("P", 1, "four_mut"), ("P", 1, "empty_mut"), ("P", 2, "four_mut"), ("P", 2, "two_mut"), ("P", 2, "one_mut")]
    for (_, row), name in zip(table.iterrows(), ["four", "empty", "four", "two", "one"], strict=True):
        assert_stats(row, CASES[name][3])
    assert table["total_effect"].tolist()[2:] == [-1.0, 0.5, 2.0]
    np.testing.assert_array_equal(table["completeness_error"], [0.2, np.nan, 0.1, 0.6, 0.5])
    assert (table["k"] == 8).all() and (table["d_sae"] == 6).all() and (table["space"] == "latent").all()
    assert table["layer"].dtype == np.int64 and table["n_changed"].dtype == np.int64
    empty = concentration_by_mutant({})
    assert empty.empty and list(empty.columns) == TABLES["ig_concentration_mutants"]


def test_ig_concentration_by_hand():
    table = ig_concentration(concentration_results())
    assert list(table.columns) == CONCENTRATION_COLUMNS == TABLES["ig_concentration"]
    # Proteins in input order (Q first), layers ascending.
    assert list(zip(table["protein"], table["layer"], strict=True)) == [("Q", 4), ("P", 1), ("P", 2)]
    assert table["n_mutants"].tolist() == [0, 2, 3]
    assert table["layer"].dtype == np.int64 and table["n_mutants"].dtype == np.int64

    p2 = table.iloc[2]
    # Gini 1/4, 1/4, 2/3: mean 7/18, deviations −5/36, −5/36, 10/36 → std 5√3/36, sem 5/36.
    assert p2["gini_mean"] == pytest.approx(7 / 18) and p2["gini_sem"] == pytest.approx(5 / 36)
    # Null 0, 1/4, 0: mean 1/12; Gini above the null for "four" and "one", equal for "two".
    assert p2["gini_null_mean"] == pytest.approx(1 / 12)
    assert p2["gini_above_null"] == pytest.approx(2 / 3)
    # Differences 1/4, 0, 2/3: the zero is dropped, two positive → exact two-sided p 2 · 1/4.
    assert p2["gini_wilcoxon_p"] == pytest.approx(0.5)
    assert p2["gini_wilcoxon_p"] == pytest.approx(stats.wilcoxon([0.25, 0.0, 2 / 3]).pvalue, rel=1e-12)
    # k90 3, 2, 1: mean 2, sem 1/√3; null 4, 2, 3: mean 3, sem 1/√3; |C| 4, 2, 3.
    assert p2["k90_mean"] == pytest.approx(2.0) and p2["k90_sem"] == pytest.approx(1 / math.sqrt(3))
    assert p2["k90_null_mean"] == pytest.approx(3.0) and p2["k90_null_sem"] == pytest.approx(1 / math.sqrt(3))
    assert p2["n_changed_mean"] == pytest.approx(3.0)
    # Shares 0.5, 0.8, 1.0 (null 1, 1, 1 → sem 0); error shares 0.5, 0.2, 0.
    assert p2["top20_share_mean"] == pytest.approx(2.3 / 3)
    assert p2["top20_share_null_mean"] == pytest.approx(1.0) and p2["top20_share_null_sem"] == 0.0
    assert p2["error_share_mean"] == pytest.approx(0.7 / 3)
    assert p2["median_completeness_error"] == pytest.approx(0.5)  # of 0.1, 0.6, 0.5 (the mean would be 0.4)
    # Every mean and sem against numpy over the hand-made per-mutant values.
    for stat in STATS:
        values = np.array([CASES[name][3][stat] for name in ("four", "two", "one")], dtype=np.float64)
        assert p2[f"{stat}_mean"] == pytest.approx(values.mean(), abs=1e-12), stat
        assert p2[f"{stat}_sem"] == pytest.approx(values.std(ddof=1) / np.sqrt(3), abs=1e-12), stat

    p1 = table.iloc[1]
    # "four" and "empty": |C| 4 and 0 (mean 2, sem 2); every other statistic has one finite value.
    assert p1["n_changed_mean"] == pytest.approx(2.0) and p1["n_changed_sem"] == pytest.approx(2.0)
    assert p1["gini_mean"] == 0.25 and np.isnan(p1["gini_sem"])
    assert p1["top20_share_mean"] == 0.5 and p1["error_share_mean"] == 0.5 and p1["k90_null_mean"] == 4
    assert p1["gini_above_null"] == 1.0  # the mutant without a Gini is not counted
    assert np.isnan(p1["gini_wilcoxon_p"])  # one difference
    assert p1["median_completeness_error"] == pytest.approx(0.2)  # NaN skipped

    q4 = table.iloc[0]
    assert all(np.isnan(q4[c]) for c in CONCENTRATION_COLUMNS[3:-4])
    assert (q4["k"], q4["d_sae"], q4["space"], q4["activations"]) == (16, 6, "pre", "fair-esm")
    assert table[SAE_SETTINGS].values.tolist()[1:] == [[8, 6, "latent", "interprot"], [8, 6, "latent", "interprot"]]


def test_ig_concentration_null_is_visible():
    # A mutant whose |A| merely follows its |Δ| is no more concentrated than the null.
    delta = np.array([[8.0, 4.0, 2.0, 1.0, 0.0, 0.0]])
    table = ig_concentration({("P", 1): result(0.5 * delta, 1, abs_delta=delta)}).iloc[0]
    assert table["gini_mean"] == pytest.approx(table["gini_null_mean"])
    assert table["k90_mean"] == table["k90_null_mean"] and table["gini_above_null"] == 0.0
    # Concentrating A on one of four equally moved features: Gini 3/4 against 0, k90 1 against 4.
    flat = np.array([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    row = ig_concentration({("P", 1): result([[2.0, 0, 0, 0, 0, 0]], 1, abs_delta=flat)}).iloc[0]
    assert (row["gini_mean"], row["gini_null_mean"]) == (pytest.approx(0.75), 0.0)
    assert (row["k90_mean"], row["k90_null_mean"], row["n_changed_mean"]) == (1, 4, 4)
    assert row["gini_above_null"] == 1.0


def test_ig_concentration_rejects_bad_input():
    good = result(np.ones((2, 5)), 3)
    assert len(ig_concentration({("P", 3): good})) == 1
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*error_attribution"):
        ig_concentration({("P", 3): {**good, "error_attribution": np.zeros(3)}})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*missing"):
        ig_concentration({("P", 3): {k: v for k, v in good.items() if k != "total_effect"}})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*missing.*abs_delta"):
        ig_concentration({("P", 3): {k: v for k, v in good.items() if k != "abs_delta"}})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*abs_delta.*shape"):
        ig_concentration({("P", 3): {**good, "abs_delta": np.ones((2, 4))}})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*abs_delta.*NaN"):
        ig_concentration({("P", 3): {**good, "abs_delta": np.full((2, 5), np.nan)}})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*NaN"):
        ig_concentration({("P", 3): {**good, "attribution": np.full((2, 5), np.nan)}})
    with pytest.raises(ValueError, match=r"\('P', layer 4\).*layer 3"):
        ig_concentration({("P", 4): good})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*2-D"):
        ig_concentration({("P", 3): {**good, "attribution": np.ones(5)}})


def test_top_n_features_ties_and_zeros():
    a = np.array([[0.0, 1.0, -1.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0, -2.0]])
    tops = top_n_features(a, n=2)
    assert tops[0].tolist() == [1, 2]  # ties to the lower index
    assert tops[1].tolist() == [4]  # zeros never count
    assert top_n_features(a, n=10)[0].tolist() == [1, 2, 3, 4]


# --- feature_consistency ---------------------------------------------------------------------------------------------

def test_feature_consistency_planted():
    table = feature_consistency(planted())
    assert list(table.columns) == CONSISTENCY_COLUMNS == TABLES["feature_consistency"]
    expected = [
        ("P", 7, 4, 4), ("P", 11, 4, 4), ("P", 20, 1, 4), ("P", 21, 1, 4), ("P", 22, 1, 4), ("P", 23, 1, 4),
        ("Q", 7, 4, 4), ("Q", 3, 2, 4), ("Q", 25, 1, 4),
        ("R", 3, 3, 3), ("R", 11, 1, 3),
    ]
    got = list(zip(table["protein"], table["feature"], table["n_top"], table["n_mutants"], strict=True))
    assert got == expected
    np.testing.assert_allclose(table["fraction"], [t / m for _, _, t, m in expected], rtol=0, atol=0)
    assert table["feature"].dtype == np.int64 and table["n_top"].dtype == np.int64
    assert (table["layer"] == 6).all() and (table["k"] == 8).all()
    assert (table["d_sae"] == D_SAE).all() and (table["space"] == "latent").all()


def test_feature_consistency_records_each_results_settings():
    results = {"P": result(np.eye(3), 2, k=4, d_sae=3, space="pre", activations="fair-esm"),
               "Q": result(np.eye(3)[:1], 2)}
    table = feature_consistency(results)
    pre = [2, 4, 3, "pre", "fair-esm"]
    assert table[["protein", "feature", "layer", *SAE_SETTINGS]].values.tolist() == [
        ["P", 0, *pre], ["P", 1, *pre], ["P", 2, *pre], ["Q", 0, 2, 8, 3, "latent", "interprot"]]


def test_feature_consistency_top_n_cut():
    # With n=1 only each mutant's largest |A| counts: P → 7 (2.0 > 1.5; 23's 2.0 ties with 7 but 7 is lower).
    table = feature_consistency(planted(), n=1)
    got = list(zip(table["protein"], table["feature"], table["n_top"], strict=True))
    assert got == [("P", 7, 4), ("Q", 7, 4), ("R", 3, 3)]


def test_feature_consistency_dense_matches_reference():
    rng = np.random.default_rng(3)
    a = rng.normal(scale=0.1, size=(4, D_SAE))
    a[:, 7] = 5.0
    a[1, 12] = 0.0
    table = feature_consistency({"P": result(a, 2)}, n=20)
    counts = {}
    for row in a:
        ranked = sorted(range(D_SAE), key=lambda j: (-abs(row[j]), j))[:20]
        for j in ranked:
            if row[j] != 0:
                counts[j] = counts.get(j, 0) + 1
    expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    assert list(zip(table["feature"], table["n_top"], strict=True)) == expected
    assert table.loc[table["feature"] == 7, "fraction"].tolist() == [1.0]


def test_feature_consistency_empty():
    table = feature_consistency({"P": result(np.zeros((0, 5)), 1), "Q": result(np.zeros((2, 5)), 1)})
    assert table.empty and list(table.columns) == CONSISTENCY_COLUMNS


# --- universal_features ----------------------------------------------------------------------------------------------

UNIVERSAL = ["feature", "label", "layer", "proteins"]


def test_universal_features_planted():
    results = {("P", 6): planted(6)["P"], ("Q", 6): planted(6)["Q"], ("R", 6): planted(6)["R"],
               ("P", 2): planted(2)["P"], ("Q", 2): result(np.zeros((0, D_SAE)), 2)}
    table = universal_features(results)
    assert list(table.columns) == [*UNIVERSAL, "freq_P", "freq_Q", "freq_R", *SAE_SETTINGS]
    # Layer 2: Q has no mutants and R no results → nothing shared by two proteins.
    # Layer 6: 3 (Q 0.5, R 1.0) and 7 (P, Q); 11 fails (R 1/3 < 0.5).
    assert table[["feature", "layer", "proteins"]].values.tolist() == [[3, 6, "Q;R"], [7, 6, "P;Q"]]
    np.testing.assert_array_equal(table["freq_P"], [0.0, 1.0])
    np.testing.assert_array_equal(table["freq_Q"], [0.5, 1.0])
    np.testing.assert_array_equal(table["freq_R"], [1.0, 0.0])
    assert table["feature"].dtype == np.int64 and table["layer"].dtype == np.int64
    assert table[SAE_SETTINGS].values.tolist() == [[8, D_SAE, "latent", "interprot"]] * 2


def test_universal_features_ordering_and_nan():
    a = np.zeros((2, 10))
    a[:, 4] = 1.0
    a[:, 9] = 2.0
    b = a.copy()
    b[:, 9] = 0.0
    results = {("A", 3): result(a, 3, k=32), ("B", 3): result(a, 3, k=32), ("C", 3): result(b, 3, k=32),
               ("A", 1): result(a, 1), ("B", 1): result(a, 1), ("C", 1): result(np.zeros((0, 10)), 1)}
    table = universal_features(results)
    # Layer 1 first; within layer 3 feature 4 (3 proteins) before 9 (2 proteins).
    assert table[["feature", "layer", "proteins"]].values.tolist() == [
        [4, 1, "A;B"], [9, 1, "A;B"], [4, 3, "A;B;C"], [9, 3, "A;B"]]
    assert np.isnan(table["freq_C"].iloc[0]) and np.isnan(table["freq_C"].iloc[1])
    assert table["freq_C"].iloc[3] == 0.0
    assert table["k"].tolist() == [8, 8, 32, 32] and (table["d_sae"] == 10).all()


def test_universal_features_of_two_forwards_at_a_layer_are_refused():
    """P at layer 6 on the fair-esm forward beside Q and R on interprot: two studies mixed, named by layer."""
    results = {("P", 6): result(planted(6)["P"]["attribution"], 6, activations="fair-esm"),
               ("Q", 6): planted(6)["Q"], ("R", 6): planted(6)["R"]}
    with pytest.raises(InputError, match=r"^universal features at layer 6: inputs measured on different forwards "
                                         r"\(activations fair-esm, interprot\)"):
        universal_features(results)
    assert universal_features({**results, ("P", 6): planted(6)["P"]})["activations"].tolist() == ["interprot"] * 2


def test_universal_features_empty():
    table = universal_features({})
    assert table.empty and list(table.columns) == [*UNIVERSAL, *SAE_SETTINGS]
    table = universal_features({("P", 1): result(np.zeros((0, 4)), 1)})
    assert table.empty and list(table.columns) == [*UNIVERSAL, "freq_P", *SAE_SETTINGS]


# --- circuit_sizes ---------------------------------------------------------------------------------------------------

def test_circuit_sizes_concat_and_dtypes(tmp_path):
    a = sizes_frame("P", 2, [1, None, 3])
    b = sizes_frame("Q", 4, [5, None, None], negligible=[False, True, False], k=16, space="pre",
                    activations="fair-esm")
    # As the rule reads it back from a CSV: n_features float with NaN.
    a.assign(layer=6).to_csv(tmp_path / "c.csv", index=False)
    c = read_table(tmp_path / "c.csv", "circuit_sizes")
    assert c["n_features"].dtype == np.float64
    table = circuit_sizes([a, b, c])
    assert list(table.columns) == SIZE_COLUMNS == TABLES["circuit_sizes"]
    assert table["protein"].tolist() == ["P"] * 3 + ["Q"] * 3 + ["P"] * 3
    assert table["layer"].tolist() == [2, 2, 2, 4, 4, 4, 6, 6, 6]
    assert table["mutant"].tolist() == ["A0C", "A1C", "A2C"] * 3
    assert str(table["n_features"].dtype) == "Int64" and table["layer"].dtype == np.int64
    assert table["full_effect"].dtype == np.float64 and table["negligible"].dtype == bool
    assert table["n_features"].isna().tolist() == [False, True, False, False, True, True, False, True, False]
    assert table["n_features"].dropna().tolist() == [1, 3, 5, 1, 3]
    assert table["negligible"].tolist() == [False] * 4 + [True] + [False] * 4
    assert table["k"].tolist() == [8] * 3 + [16] * 3 + [8] * 3
    assert table["activations"].tolist() == ["interprot"] * 3 + ["fair-esm"] * 3 + ["interprot"] * 3
    assert table["space"].tolist() == ["latent"] * 3 + ["pre"] * 3 + ["latent"] * 3
    np.testing.assert_array_equal(table["recovered_fraction"], [0.95, np.nan, 0.95, 0.95, np.nan, np.nan] +
                                  [0.95, np.nan, 0.95])
    empty = circuit_sizes([])
    assert empty.empty and list(empty.columns) == SIZE_COLUMNS and str(empty["n_features"].dtype) == "Int64"


def test_circuit_sizes_reads_negligible_as_text():
    table = circuit_sizes([sizes_frame("P", 2, [2, None]).assign(negligible=["False", "true"])])
    assert table["negligible"].tolist() == [False, True] and table["negligible"].dtype == bool


@pytest.mark.parametrize("column", TABLES["circuit_sizes"])
def test_circuit_sizes_refuses_a_missing_column(column):
    with pytest.raises(ValueError, match=f"missing columns.*'{column}'"):
        circuit_sizes([sizes_frame("P", 2, [1]).drop(columns=column)])


def test_circuit_sizes_rejects_bad_values():
    with pytest.raises(ValueError, match=r"\('P', layer 2\).*n_features"):
        circuit_sizes([sizes_frame("P", 2, [1, 2]).assign(n_features=[1.5, 2.0])])
    with pytest.raises(ValueError, match=r"\('P', layer 2\).*negative"):
        circuit_sizes([sizes_frame("P", 2, [1, -1])])
    with pytest.raises(ValueError, match=r"\('P', layer 2\).*negligible mutant has a circuit size"):
        circuit_sizes([sizes_frame("P", 2, [1, 4], negligible=[False, True])])
    with pytest.raises(ValueError, match=r"\('P', layer 2\).*negligible is not True/False"):
        circuit_sizes([sizes_frame("P", 2, [1, None]).assign(negligible=[False, np.nan])])
    # The bad table is named even when it is not the first.
    with pytest.raises(ValueError, match=r"\('Q', layer 5\).*negative"):
        circuit_sizes([sizes_frame("P", 2, [1]), sizes_frame("Q", 5, [-2])])


# --- determinism -----------------------------------------------------------------------------------------------------

def test_tables_are_deterministic(tmp_path):
    results = {**{(p, layer): r for layer in (6, 2) for p, r in planted(layer).items()}, **concentration_results()}
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        ig_concentration(results).to_csv(tmp_path / run / "c.csv", index=False)
        concentration_by_mutant(results).to_csv(tmp_path / run / "m.csv", index=False)
        feature_consistency(planted()).to_csv(tmp_path / run / "f.csv", index=False)
        universal_features(results).to_csv(tmp_path / run / "u.csv", index=False)
        circuit_sizes([sizes_frame("P", 2, [1, None])]).to_csv(tmp_path / run / "s.csv", index=False)
    for name in ("c.csv", "m.csv", "f.csv", "u.csv", "s.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_text().count("\n") > 1, name


def test_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, esmsae.tables.ig, esmsae.tables.circuits, esmsae.figures.ig, esmsae.figures.circuits, "
            "esmsae.tables.statistics; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_tables_carry_the_features_labels():
    """Wherever a feature number appears, its label is beside it (looked up by layer and feature)."""
    results = planted(6)
    labels = {(6, 7): "L-identity; promotes L", (6, 3): "K/R-enriched (F1 0.41)", (2, 7): "not this layer"}
    universal = universal_features({(p, 6): r for p, r in results.items()}, labels=labels)
    assert dict(zip(universal["feature"], universal["label"], strict=True)) == {
        3: "K/R-enriched (F1 0.41)", 7: "L-identity; promotes L"}
    consistency = feature_consistency({p: r for p, r in results.items()}, labels=labels)
    assert list(consistency.columns[:3]) == ["protein", "feature", "label"]
    assert set(consistency.loc[consistency["feature"] == 7, "label"]) == {"L-identity; promotes L"}
    assert set(consistency.loc[~consistency["feature"].isin([3, 7]), "label"]) == {""}


def test_universal_features_min_proteins_count_and_fraction():
    """Layer 3 of the ordering case: feature 4 is consistent in A, B and C, feature 9 in A and B (C has
    results, so three proteins at the layer). A count of 3, or a fraction of 2/3 < x ≤ 1 rounded up to 3, keeps
    only 4; a fraction of 0.5 (⌈1.5⌉ = 2) or 0.1 (⌈0.3⌉ = 1, raised to 2) keeps both."""
    a = np.zeros((2, 10))
    a[:, 4] = 1.0
    a[:, 9] = 2.0
    b = a.copy()
    b[:, 9] = 0.0
    results = {("A", 3): result(a, 3), ("B", 3): result(a, 3), ("C", 3): result(b, 3)}
    kept = {m: universal_features(results, min_proteins=m)["feature"].tolist() for m in (2, 3, 4, 0.5, 0.1, 0.7, 0.99)}
    assert kept == {2: [4, 9], 3: [4], 4: [], 0.5: [4, 9], 0.1: [4, 9], 0.7: [4], 0.99: [4]}


def test_required_proteins_by_hand():
    from esmsae.config.settings import required_proteins

    assert [required_proteins(m, n) for m, n in [(2, 217), (5, 3), (0.1, 217), (0.5, 4), (0.3, 10), (0.75, 4),
                                                 (0.01, 3), (0.5, 5)]] == [2, 5, 22, 2, 3, 3, 2, 3]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="universal.min_proteins"):
            required_proteins(bad, 3)


# --- what a careful reviewer would get wrong (mutation testing, mutation/tables.md) -------------------------------

def test_statistics_take_absolute_values_of_any_integer_type():
    """|x| is taken after converting to float: int8 −128 is 128 (in int8 itself np.abs(−128) wraps to −128).

    k90 of |[−128, 100, 100]| = [128, 100, 100]: 0.9 · 328 = 295.2 > 228 → 3 (with −128 wrapped: Σ 72, 100 ≥ 64.8
    → 1). top_share n=1 of |[−128, 1, 1]|: 128/130. Plain integer arrays give the float answers:
    k90([4, 3, 2, 1]) = 3, Gini of [0, 0, 1, 3] = 0.625.
    """
    assert k90(np.array([-128, 100, 100], dtype=np.int8)) == 3
    wrapped = np.array([-128, 1, 1], dtype=np.int8)
    assert top_share(wrapped, n=1) == pytest.approx(128 / 130)
    assert k90(np.array([4, 3, 2, 1])) == 3
    assert gini(np.array([3, 0, 1, 0])) == pytest.approx(0.625)
    assert mean_sem(np.array([1, 2, 3, 4]))[0] == 2.5


def test_statistics_read_a_missing_value_given_as_none_as_nan():
    """A per-mutant value missing as None (an object sequence, as a pandas object column gives) is NaN: skipped
    by mean_sem and wilcoxon_p like any non-finite value, and refused by gini as non-finite (ValueError).

    mean_sem([1, None, 3]): mean 2, std √2, sem √2/√2 = 1. wilcoxon_p([0.4, None, 1.0, 0.1]): the three
    positive differences left, exact two-sided p = 2/8.
    """
    assert mean_sem([1.0, None, 3.0]) == (2.0, 1.0)
    assert wilcoxon_p([0.4, None, 1.0, 0.1]) == 0.25
    with pytest.raises(ValueError, match="^gini: values must be finite$"):
        gini([0.0, None, 1.0])
    # spearman: NaN propagates (scipy's default), on either side: (nan, nan), not a TypeError from sorting None.
    assert all(np.isnan(spearman([1.0, None, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])))
    assert all(np.isnan(spearman([1.0, 2.0, 3.0, 4.0], [1.0, None, 2.0, 3.0])))


def test_k90_exactly_on_its_bar():
    """k90 counts a cumulative sum that reaches the bar, including exactly: with the round-off allowance
    the bar is ``share · Σ · (1 − 1e-12)``. Values [c, 1 − c] with c that bar for Σ = 1 (c + (1 − c) is exactly 1.0
    in floating point): the first value alone reaches it → 1, not 2."""
    c = 0.9 * 1.0 * (1 - 1e-12)
    values = np.array([c, 1 - c])
    assert values.sum() == 1.0  # the sum is exact, so the bar is exactly c
    assert k90(values) == 1


def test_top_share_of_values_summing_to_one():
    # |A| = 0.5, 0.25, 0.25 (Σ = 1 exactly): the top one is half of it; NaN only when Σ = 0.
    assert top_share(np.array([0.25, 0.5, 0.25]), n=1) == 0.5


@pytest.mark.parametrize("bad", [True, 2.5, 0])
def test_n_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        top_share(np.ones(3), n=bad)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        top_n_features(np.ones((1, 3)), n=bad)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        feature_consistency(planted(), n=bad)


def test_n_may_be_a_numpy_integer():
    assert top_share(np.array([4.0, 1.0, 3.0, 2.0]), n=np.int64(2)) == pytest.approx(0.7)
    assert top_n_features(np.array([[1.0, 3.0, 2.0]]), n=np.int64(2))[0].tolist() == [1, 2]


def test_gini_error_messages():
    with pytest.raises(ValueError, match="^gini: values must be non-negative$"):
        gini(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="^gini: values must be finite$"):
        gini(np.array([1.0, np.inf]))


def test_top_n_features_ties_in_a_long_row():
    """60 features alternating 1, 2: the 30 twos tie, and the top-20 is the 20 lowest of them (1, 3, …, 39).
    An unstable sort (numpy's default quicksort) picks other tied indices at this length."""
    a = np.array([[1.0, 2.0] * 30])
    assert top_n_features(a)[0].tolist() == list(range(1, 40, 2))
    # int8 −128: |A| = 128 is the largest (not dropped as "≤ 0" after a wrapped abs).
    assert top_n_features(np.array([[-128, 1]], dtype=np.int8))[0].tolist() == [0, 1]


def test_mutant_concentration_top_n_takes_the_largest():
    """|A| = 1..25 (Σ 325), no error: the top-20 are 6..25, Σ = 325 − 15 = 310 (the smallest 20 would give 210)."""
    out = mutant_concentration(np.arange(1.0, 26.0), 0.0, np.ones(25))
    assert out["top20_share"] == pytest.approx(310 / 325)
    assert mutant_concentration(np.arange(1.0, 26.0), 0.0, np.ones(25), n=5)["top20_share"] == pytest.approx(
        115 / 325)  # 21 + … + 25


def test_mutant_concentration_denominator_below_one():
    """D = |A| + |A_err| = 0.25 + 0.25 = 0.5 (0 < D < 1) and D = 1 exactly: shares are defined whenever D > 0."""
    half = mutant_concentration(np.array([0.25, 0.0]), -0.25, np.array([1.0, 0.0]))
    assert (half["top20_share"], half["error_share"]) == (0.5, 0.5)
    one = mutant_concentration(np.array([0.5, 0.0]), 0.5, np.array([1.0, 0.0]))
    assert (one["top20_share"], one["error_share"]) == (0.5, 0.5)
    # int8 −128 attribution and |Δ|: |A| = 128, D = 128 + 0: share 1; the feature is changed (|Δ| 128 > 0).
    wrapped = mutant_concentration(np.array([-128, 0], dtype=np.int8), 0.0, np.array([-128, 0], dtype=np.int8))
    assert (wrapped["n_changed"], wrapped["top20_share"], wrapped["k90"]) == (1, 1.0, 1)


def test_empty_statistics_without_warnings():
    """D = 0, no mutants, no completeness errors: NaN, quietly (no 0/0 or 'mean of empty slice' warnings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mutant_concentration(np.zeros(4), 0.0, np.zeros(4))
        table = ig_concentration(concentration_results())
    assert np.isnan(out["top20_share"]) and np.isnan(out["error_share"])
    q4 = table.iloc[0]
    assert np.isnan(q4["gini_above_null"]) and np.isnan(q4["median_completeness_error"])


def test_concentration_tables_pass_n_on():
    """n = 1: "four" (|A| 4, 3, 2, 1, A_err 10): top-1 share 4/20, null (|Δ| 1, 1, 1, 1) 1/4;
    "two": 6/10, null (|Δ| 1, 3) 3/4; "one": 3/3, null (|Δ| 2, 2, 2) 1/3."""
    by_mutant = concentration_by_mutant(concentration_results(), n=1)
    assert by_mutant["top20_share"].tolist()[2:] == pytest.approx([0.2, 0.6, 1.0])
    assert by_mutant["top20_share_null"].tolist()[2:] == pytest.approx([0.25, 0.75, 1 / 3])
    table = ig_concentration(concentration_results(), n=1)
    assert table["top20_share_mean"].iloc[2] == pytest.approx(1.8 / 3)


def test_ig_concentration_of_nothing_has_the_columns():
    table = ig_concentration({})
    assert table.empty and list(table.columns) == CONCENTRATION_COLUMNS


def test_checked_results_layer():
    """The layer a result carries must match its key, for an Attributions as for a dict; a dict may carry none.

    Errors name the protein and the layer: the key's, or the result's own when there is no key, or '?'.
    """

    typed = Attributions.of(result(np.ones((1, 4)), 3), "here")
    with pytest.raises(ValueError, match=r"\('P', layer 4\): file says layer 3"):
        ig_concentration({("P", 4): typed})
    assert ig_concentration({("P", 3): typed})["n_mutants"].tolist() == [1]
    bare = {k: v for k, v in result(np.ones((1, 4)), 3).items() if k != "layer"}
    assert checked("P", 5, bare).n == 1 and checked("P", None, bare).layer is None
    bad = {**result(np.ones((2, 4)), 6), "total_effect": np.zeros(3)}
    with pytest.raises(ValueError, match=r"^IG results \('Q', layer 6\): total_effect"):
        feature_consistency({"Q": bad})
    with pytest.raises(ValueError, match=r"^IG results \('Q', layer \?\): total_effect"):
        feature_consistency({"Q": {k: v for k, v in bad.items() if k != "layer"}})


def test_feature_consistency_after_a_protein_without_mutants():
    """An empty protein first does not stop the next; the table has a fresh 0..n−1 index."""
    table = feature_consistency({"E": result(np.zeros((0, D_SAE)), 6), **planted()})
    assert table["protein"].tolist()[0] == "P" and set(table["protein"]) == {"P", "Q", "R"}
    assert table.index.tolist() == list(range(len(table)))
    empty = feature_consistency({"E": result(np.zeros((0, D_SAE)), 6)})
    assert [empty[c].dtype for c in ("feature", "n_top", "n_mutants")] == [np.int64] * 3


def test_universal_features_more_cases():
    """n passes on; a feature met by one protein does not stop the others; an empty protein first; labels.

    A, B, C over 6 features, 2 mutants each (C none). Feature 0: A's two mutants only (A alone meets it);
    feature 5 in every mutant of A and B. n = 1: A's mutants' top-1 is feature 0 (|A| 3 > 2), B's is feature 5.
    """
    a = np.zeros((2, 6))
    a[:, 0], a[:, 5] = 3.0, 2.0
    b = np.zeros((2, 6))
    b[:, 5] = 1.0
    results = {("C", 2): result(np.zeros((0, 6)), 2), ("A", 2): result(a, 2), ("B", 2): result(b, 2)}
    table = universal_features(results, labels={(2, 0): "unused"})
    assert table[["feature", "proteins"]].values.tolist() == [[5, "A;B"]]
    assert table["label"].tolist() == [""]  # no label for (2, 5)
    assert np.isnan(table["freq_C"].iloc[0]) and table["freq_A"].iloc[0] == 1.0 and table["freq_B"].iloc[0] == 1.0
    assert (table["k"].iloc[0], table["d_sae"].iloc[0], table["space"].iloc[0]) == (8, 6, "latent")
    assert universal_features(results, n=1).empty  # top-1: A → 0, B → 5; no feature shared
    empty = universal_features({})
    assert empty["feature"].dtype == np.int64 and empty["layer"].dtype == np.int64
    no_rows = universal_features({("P", 1): result(np.zeros((0, 4)), 1)})
    assert no_rows["freq_P"].dtype == np.float64


# --- circuits: the bars exactly --------------------------------------------------------------------------------------

def test_minimal_size_exactly_on_the_bar():
    """|r_n − 1| ≤ 1 − recover counts on the bar. recover 0.75: r = 1.25 and 0.75 are exactly 0.25 away (exact
    in floating point) → within; 1.25 + 2⁻⁸ is not. The bar carries a 1e-12 round-off allowance, inclusive too:
    with recover 0.25 the bar is 0.75 + 1e-12 and r = 1 − that bar is exactly that far from 1."""

    assert abs(1.25 - 1) == 1 - 0.75 == 0.25
    assert minimal_size(np.array([0.0, 1.25]), 0.75) == 1
    assert minimal_size(np.array([0.0, 0.75]), 0.75) == 1
    assert math.isnan(minimal_size(np.array([0.0, 1.25 + 2 ** -8]), 0.75))
    bar = (1 - 0.25) + 1e-12
    r = 1 - bar
    assert abs(r - 1) == bar
    assert minimal_size(np.array([0.0, r]), 0.25) == 1
    assert minimal_size(np.array([0, 1]), 0.9) == 1  # integer fractions
    # int8 −127: |−127 − 1| = 128, far outside (in int8, −127 − 1 = −128 and its abs wraps to −128).
    assert math.isnan(minimal_size(np.array([0, -127], dtype=np.int8), 0.9))


def test_negligible_exactly_at_min_effect():
    """Negligible means |F| < min_effect: |F| = 0.25 = min_effect is not negligible, either sign; 0.125 is."""

    assert negligible(np.array([0.25, -0.25, 0.125, -0.125, 0.0]), 0.25).tolist() == [False, False, True, True, True]
    assert not negligible(np.array([-128], dtype=np.int8), 1.0)[0]  # |−128| = 128 (int8 abs would wrap)


def sizes_curves(mutant, recovered, features, full_effect, layer=4):
    """A hand-made circuit-curves table (rows n = 0..), as esmsae.analyses.circuits.curves_table writes it."""
    n = len(recovered)
    return pd.DataFrame({"mutant": mutant, "n_features": range(n), "feature": [pd.NA, *features],
                         "patched_score": 0.0, "recovered_fraction": recovered, "complement_score": 0.0,
                         "complement_fraction": 0.0, "full_effect": full_effect, "layer": layer, "k": 8,
                         "d_sae": 96, "space": "latent"}, columns=TABLES["circuit_curves"])


def test_circuit_sizes_from_curves_at_the_bars_and_in_table_order():
    """recover 0.75, min_effect 0.25 (both bars exact in floating point).

    Z1A (first in the table, after it alphabetically): |F| = 0.25 = min_effect → not negligible; r 0, 0.5, 1.25
    → n 2 (|1.25 − 1| = 0.25 on the bar), features 3;8 ascending. B1C: F = −0.125 → negligible, no size.
    A1C: F = −0.25 → not negligible; r 0, 0.74 (0.26 away), 0.75 → n 2.
    """

    curves = pd.concat([sizes_curves("Z1A", [0.0, 0.5, 1.25], [8, 3], 0.25),
                        sizes_curves("B1C", [0.0, 1.0, 1.0], [1, 2], -0.125),
                        sizes_curves("A1C", [0.0, 0.74, 0.75], [5, 6], -0.25)], ignore_index=True)
    sizes = circuit_sizes_from_curves(curves, "P", CircuitSizeSettings(recover=0.75, min_effect=0.25))
    assert sizes["mutant"].tolist() == ["Z1A", "B1C", "A1C"]
    assert sizes["negligible"].tolist() == [False, True, False]
    assert sizes["n_features"].tolist() == [2, pd.NA, 2]
    assert sizes["features"].tolist() == ["3;8", "", "5;6"]
    np.testing.assert_array_equal(sizes["recovered_fraction"], [1.25, np.nan, 0.75])
    empty = circuit_sizes_from_curves(curves.iloc[:0], "P", CircuitSizeSettings(recover=0.75, min_effect=0.25))
    assert empty.empty and list(empty.columns) == SIZE_COLUMNS


def test_circuit_sizes_from_curves_of_a_curve_with_only_n_0():
    """A mutant whose curve is the single row n = 0 (0, …, n with n = 0 is accepted): its full effect and
    settings are read from that row. F = 0.5 ≥ min_effect 0.25 → not negligible; r_0 = 0 is 1 away from 1
    (bar 0.25) → no minimal circuit: n_features <NA>, recovered_fraction NaN, features ""."""
    curves = pd.concat([sizes_curves("A1C", [0.0], [], 0.5, layer=3),
                        sizes_curves("D2E", [0.0, 1.0], [6], -1.0, layer=3)], ignore_index=True)
    sizes = circuit_sizes_from_curves(curves, "P", CircuitSizeSettings(recover=0.75, min_effect=0.25))
    assert sizes["mutant"].tolist() == ["A1C", "D2E"]
    assert sizes["full_effect"].tolist() == [0.5, -1.0] and sizes["negligible"].tolist() == [False, False]
    assert sizes["n_features"].tolist() == [pd.NA, 1] and sizes["features"].tolist() == ["", "6"]
    np.testing.assert_array_equal(sizes["recovered_fraction"], [np.nan, 1.0])
    assert sizes[["layer", "k", "d_sae", "space"]].values.tolist() == [[3, 8, 96, "latent"]] * 2


def test_circuit_sizes_reading_details(tmp_path):
    """n_features 0 is not negative; an empty `features` cell read back from a CSV is ""; the index is fresh;
    a bad table without protein/layer is named by its position; the empty table keeps its dtypes."""
    zero = sizes_frame("P", 2, [0, None])
    assert circuit_sizes([zero])["n_features"].tolist() == [0, pd.NA]
    sizes_frame("P", 2, [1, None]).assign(features=["4", ""]).to_csv(tmp_path / "s.csv", index=False)
    back = read_table(tmp_path / "s.csv", "circuit_sizes")
    assert back["features"].isna().tolist() == [False, True]  # how an empty cell comes back
    table = circuit_sizes([sizes_frame("P", 2, [1]).assign(features="3"), back])
    assert table["features"].tolist() == ["3", "4", ""]
    assert table.index.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"circuit sizes #1: missing columns \['protein'\]"):
        circuit_sizes([sizes_frame("P", 2, [1]), sizes_frame("Q", 3, [1]).drop(columns="protein")])
    empty = circuit_sizes([])
    assert empty["layer"].dtype == np.int64 and empty["full_effect"].dtype == np.float64


# --- the rules, on files ---------------------------------------------------------------------------------------------

def test_tabulate_circuit_sizes_rule(tmp_path):
    """Curves of two (protein, layer)s read from CSV, sizes read off with the settings, each feature labelled in
    the table's feature order (" | "-joined, "" where a feature has no label)."""

    sizes_curves("A1C", [0.0, 0.5, 0.95], [7, 2], -0.4).to_csv(tmp_path / "P_L4.csv", index=False)
    pd.concat([sizes_curves("D2E", [0.0, 1.0], [9], 0.5, layer=2),
               sizes_curves("F3G", [0.0, 1.0], [1], 0.01, layer=2)]).to_csv(tmp_path / "Q_L2.csv", index=False)
    curves = {("P", 4): tmp_path / "P_L4.csv", ("Q", 2): tmp_path / "Q_L2.csv"}
    settings = CircuitSizeSettings(recover=0.9, min_effect=0.05)
    sizes = minimal_circuits(curves, settings)
    assert sizes["protein"].tolist() == ["P", "Q", "Q"] and sizes["n_features"].tolist() == [2, 1, pd.NA]
    write_labels(tmp_path / "labels.csv", {(4, 7): "L-identity", (2, 9): "K/R-enriched", (4, 9): "other layer"})
    tabulate_circuit_sizes(curves, settings, tmp_path / "labels.csv", tmp_path / "out.csv")
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out.columns) == TABLES["circuit_sizes_labelled"]
    assert out["features"].astype(str).tolist() == ["2;7", "9", ""]
    assert out["labels"].tolist() == [" | L-identity", "K/R-enriched", ""]
    assert out["negligible"].tolist() == [False, False, True]


def write_result(path, res):
    np.savez(path, **res)
    return path


def test_tabulate_attributions_rule(tmp_path):
    """The rule writes concentration (per layer and per mutant), universal features and per-layer consistency
    from npz files, labelled; each consistency table holds only its own layer's proteins."""

    paths = {(p, 6): write_result(tmp_path / f"{p}_L6.npz", r) for p, r in planted(6).items()}
    paths[("P", 2)] = write_result(tmp_path / "P_L2.npz", case_result(["four", "two", "one"], 2))
    write_labels(tmp_path / "labels.csv", {(6, 7): "L-identity", (6, 3): "K/R", (2, 4): "two's"})
    out = {name: tmp_path / f"{name}.csv" for name in ("concentration", "concentration_mutants", "universal")}
    consistency = {6: tmp_path / "c6.csv", 2: tmp_path / "c2.csv"}
    tabulate_attributions(paths, tmp_path / "labels.csv", out, consistency)

    concentration = read_table(out["concentration"], "ig_concentration")
    assert list(zip(concentration["protein"], concentration["layer"], strict=True)) == [
        ("P", 2), ("P", 6), ("Q", 6), ("R", 6)]
    assert concentration["gini_mean"].iloc[0] == pytest.approx(7 / 18)  # as in test_ig_concentration_by_hand
    mutants = read_table(out["concentration_mutants"], "ig_concentration_mutants")
    assert mutants["mutant"].tolist()[:3] == ["four_mut", "two_mut", "one_mut"]
    assert mutants["top20_share"].tolist()[:3] == pytest.approx([0.5, 0.8, 1.0])
    universal = read_table(out["universal"], "universal_features")
    assert universal[["feature", "layer", "proteins", "label"]].values.tolist() == [
        [3, 6, "Q;R", "K/R"], [7, 6, "P;Q", "L-identity"]]
    c6 = read_table(consistency[6], "feature_consistency")
    assert c6["protein"].drop_duplicates().tolist() == ["P", "Q", "R"] and (c6["layer"] == 6).all()
    assert c6.loc[c6["feature"] == 7, "label"].tolist() == ["L-identity"] * 2
    c2 = read_table(consistency[2], "feature_consistency")
    # Layer 2: "four" (features 0..3), "two" (4, 5), "one" (5): feature 5 in 2 of 3; 4 labelled.
    assert c2["protein"].unique().tolist() == ["P"] and c2["feature"].tolist() == [5, 0, 1, 2, 3, 4]
    assert c2["n_top"].tolist() == [2, 1, 1, 1, 1, 1]
    assert c2["label"].fillna("").tolist() == ["", "", "", "", "", "two's"]


def test_tabulate_attributions_passes_min_proteins_on(tmp_path):
    """universal.min_proteins reaches the universal table: the planted features 3 (Q;R) and 7 (P;Q) meet the
    half-the-mutants bar in 2 of the 3 proteins, so with min_proteins 3 (all three) no feature is universal,
    and with the fraction 0.5 (⌈1.5⌉ = 2 proteins) both are, as with the default 2."""
    paths = {(p, 6): write_result(tmp_path / f"{p}_L6.npz", r) for p, r in planted(6).items()}
    write_labels(tmp_path / "labels.csv", {(6, 7): "L-identity"})
    out = {name: tmp_path / f"{name}.csv" for name in ("concentration", "concentration_mutants", "universal")}
    tabulate_attributions(paths, tmp_path / "labels.csv", out, {}, min_proteins=3)
    assert read_table(out["universal"], "universal_features").empty
    tabulate_attributions(paths, tmp_path / "labels.csv", out, {}, min_proteins=0.5)
    universal = read_table(out["universal"], "universal_features")
    assert universal[["feature", "proteins"]].values.tolist() == [[3, "Q;R"], [7, "P;Q"]]


def test_tabulate_top_features_rule(tmp_path):
    """Each mutant's features by |A| (at most 20, A = 0 never), with the signed A, its |Δ| and label.

    Mutant 0: A = 25 features of −1, 2, −3, … (|A| = j + 1 at feature j): ranks 1..20 are features 24..5.
    Mutant 1: A = 0.5 at feature 3 only. Only feature 24 has a label; the others get "" (an empty cell).
    """

    a = np.zeros((2, D_SAE))
    a[0, :25] = [(j + 1) * (-1) ** (j + 1) for j in range(25)]
    a[1, 3] = 0.5
    delta = np.abs(a) * 2
    write_result(tmp_path / "r.npz", result(a, 3, abs_delta=delta, mutants=["A1C", "D2E"], k=16, space="pre",
                                            activations="fair-esm"))
    write_labels(tmp_path / "labels.csv", {(3, 24): "L-identity", (2, 3): "other layer"})
    tabulate_top_features(tmp_path / "r.npz", tmp_path / "labels.csv", tmp_path / "top.csv")
    top = pd.read_csv(tmp_path / "top.csv", keep_default_na=False)
    assert list(top.columns) == TABLES["ig_top"]
    first = top[top["mutant"] == "A1C"]
    assert first["rank"].tolist() == list(range(1, 21)) and first["feature"].tolist() == list(range(24, 4, -1))
    assert first["attribution"].tolist()[:2] == [-25.0, 24.0]
    assert first["abs_delta"].tolist()[:2] == [50.0, 48.0]
    assert first["label"].tolist() == ["L-identity"] + [""] * 19
    second = top[top["mutant"] == "D2E"]
    assert second[["rank", "feature", "attribution", "abs_delta"]].values.tolist() == [[1, 3, 0.5, 1.0]]
    assert second["label"].tolist() == [""]
    assert top[["layer", *SAE_SETTINGS]].drop_duplicates().values.tolist() == [[3, 16, D_SAE, "pre", "fair-esm"]]
    write_result(tmp_path / "none.npz", result(np.zeros((0, D_SAE)), 3))
    tabulate_top_features(tmp_path / "none.npz", tmp_path / "labels.csv", tmp_path / "none.csv")
    none = read_table(tmp_path / "none.csv", "ig_top")
    assert none.empty and list(none.columns) == TABLES["ig_top"]
