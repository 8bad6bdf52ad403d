"""Concentration, consistency, universality and circuit-size tables against hand-made attributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from esmsae import attribution_tables as at

D_SAE = 30


def result(attribution, layer, error=None, total=None, completeness=None, mutants=None):
    """An IG result dict shaped like esmsae.ig.load_attributions's output."""
    attribution = np.asarray(attribution, dtype=np.float64).reshape(-1, np.shape(attribution)[-1])
    n = attribution.shape[0]
    return {
        "mutant": np.array(mutants if mutants is not None else [f"A{i + 1}C" for i in range(n)], dtype=str),
        "attribution": attribution,
        "error_attribution": np.zeros(n) if error is None else np.asarray(error, dtype=np.float64),
        "total_effect": np.zeros(n) if total is None else np.asarray(total, dtype=np.float64),
        "completeness_error": np.zeros(n) if completeness is None else np.asarray(completeness, dtype=np.float64),
        "steps": np.array(16), "rule": np.array("gausslegendre"), "space": np.array("latent"), "k": np.array(8),
        "error_node": np.array(True), "layer": np.array(layer),
    }


def planted(layer=6):
    """P, Q (4 mutants each) and R (3 mutants) over 30 features, few nonzero so the top-20 is every nonzero one.

    Feature 7 is in every P and Q mutant's top-20; 11 in all of P's but only 1 of R's 3 (< half);
    3 in 2 of Q's 4 (exactly half) and all of R's; 20+m only in P's mutant m; 25 in Q's mutant 0.
    """
    p = np.zeros((4, D_SAE))
    p[:, 7] = 2.0
    p[:, 11] = -1.5
    for m in range(4):
        p[m, 20 + m] = 0.5 * (m + 1)
    q = np.zeros((4, D_SAE))
    q[:, 7] = -3.0
    q[:2, 3] = 1.0
    q[0, 25] = 0.1
    r = np.zeros((3, D_SAE))
    r[:, 3] = 2.0
    r[0, 11] = 1.0
    return {"P": result(p, layer), "Q": result(q, layer), "R": result(r, layer)}


# --- gini and top_share ---------------------------------------------------------------------------------------------

def test_gini_known_values():
    # Standard form Σ(2i − n − 1) x_(i) / (n Σx): bounded by (n − 1)/n.
    assert at.gini(np.array([1.0, 1.0, 1.0, 1.0])) == 0.0
    assert at.gini(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.75)
    assert at.gini(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.75)  # order does not matter
    assert at.gini(np.zeros(5)) == 0.0
    assert at.gini(np.r_[np.zeros(99), 7.0]) == pytest.approx(0.99)
    # [0, 0, 1, 3]: (1·1 + 3·3) / (4·4) = 0.625
    assert at.gini(np.array([3.0, 0.0, 1.0, 0.0])) == pytest.approx(0.625)
    assert np.isnan(at.gini(np.array([])))
    with pytest.raises(ValueError, match="non-negative"):
        at.gini(np.array([1.0, -1.0]))


def test_top_share():
    assert at.top_share(np.ones(22)) == pytest.approx(20 / 22)
    assert at.top_share(np.array([4.0, 1.0, 3.0, 2.0]), n=2) == pytest.approx(0.7)
    assert at.top_share(np.array([-4.0, 1.0, 3.0, 2.0]), n=1) == pytest.approx(0.4)  # absolute values
    assert at.top_share(np.array([5.0, 0.0]), n=20) == 1.0
    assert np.isnan(at.top_share(np.zeros(10)))
    with pytest.raises(ValueError):
        at.top_share(np.ones(3), n=0)


def test_top_n_features_ties_and_zeros():
    a = np.array([[0.0, 1.0, -1.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0, -2.0]])
    tops = at.top_n_features(a, n=2)
    assert tops[0].tolist() == [1, 2]  # ties to the lower index
    assert tops[1].tolist() == [4]  # zeros never count
    assert at.top_n_features(a, n=10)[0].tolist() == [1, 2, 3, 4]


# --- ig_concentration ------------------------------------------------------------------------------------------------

def test_ig_concentration_by_hand():
    d = 22
    a = np.zeros((3, d))
    a[0] = 1.0  # gini 0, top-20 share 20/22, error share 2/(22+2)
    a[1, 5] = -4.0  # gini 21/22, share 1, error share 0
    # row 2 all zero with zero error: gini 0, share NaN, error share NaN
    results = {
        ("Q", 4): result(np.zeros((0, d)), 4),
        ("P", 2): result(a, 2, error=[-2.0, 0.0, 0.0], completeness=[0.1, 0.3, 0.5]),
        ("P", 1): result(a[:1], 1, error=[0.0], completeness=[0.2]),
    }
    table = at.ig_concentration(results)
    assert list(table.columns) == at.CONCENTRATION_COLUMNS
    # Proteins in input order (Q first), layers ascending.
    assert list(zip(table["protein"], table["layer"], strict=True)) == [("Q", 4), ("P", 1), ("P", 2)]
    assert table["n_mutants"].tolist() == [0, 1, 3]
    p2 = table.iloc[2]
    ginis = [0.0, 21 / 22, 0.0]
    assert p2["mean_gini"] == pytest.approx(sum(ginis) / 3)
    mean = sum(ginis) / 3
    assert p2["std_gini"] == pytest.approx(np.sqrt(sum((g - mean) ** 2 for g in ginis) / 2))
    assert p2["mean_top20_share"] == pytest.approx((20 / 22 + 1) / 2)
    assert p2["median_completeness_error"] == pytest.approx(0.3)
    assert p2["mean_error_share"] == pytest.approx((2 / 24 + 0) / 2)
    p1 = table.iloc[1]
    assert p1["mean_gini"] == 0.0 and np.isnan(p1["std_gini"])
    assert p1["mean_error_share"] == 0.0 and p1["median_completeness_error"] == pytest.approx(0.2)
    q4 = table.iloc[0]
    assert all(np.isnan(q4[c]) for c in at.CONCENTRATION_COLUMNS[3:])
    assert table["layer"].dtype == np.int64 and table["n_mutants"].dtype == np.int64


def test_ig_concentration_rejects_bad_input():
    good = result(np.ones((2, 5)), 3)
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*error_attribution"):
        at.ig_concentration({("P", 3): {**good, "error_attribution": np.zeros(3)}})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*missing"):
        at.ig_concentration({("P", 3): {k: v for k, v in good.items() if k != "total_effect"}})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*NaN"):
        at.ig_concentration({("P", 3): {**good, "attribution": np.full((2, 5), np.nan)}})
    with pytest.raises(ValueError, match=r"\('P', layer 4\).*layer 3"):
        at.ig_concentration({("P", 4): good})
    with pytest.raises(ValueError, match=r"\('P', layer 3\).*2-D"):
        at.ig_concentration({("P", 3): {**good, "attribution": np.ones(5)}})


# --- feature_consistency ---------------------------------------------------------------------------------------------

def test_feature_consistency_planted():
    table = at.feature_consistency(planted())
    assert list(table.columns) == at.CONSISTENCY_COLUMNS
    expected = [
        ("P", 7, 4, 4), ("P", 11, 4, 4), ("P", 20, 1, 4), ("P", 21, 1, 4), ("P", 22, 1, 4), ("P", 23, 1, 4),
        ("Q", 7, 4, 4), ("Q", 3, 2, 4), ("Q", 25, 1, 4),
        ("R", 3, 3, 3), ("R", 11, 1, 3),
    ]
    got = list(zip(table["protein"], table["feature"], table["n_top"], table["n_mutants"], strict=True))
    assert got == expected
    np.testing.assert_allclose(table["fraction"], [t / m for _, _, t, m in expected], rtol=0, atol=0)
    assert table["feature"].dtype == np.int64 and table["n_top"].dtype == np.int64


def test_feature_consistency_top_n_cut():
    # With n=1 only each mutant's largest |A| counts: P → 7 (2.0 > 1.5; 23's 2.0 ties with 7 but 7 is lower).
    table = at.feature_consistency(planted(), n=1)
    got = list(zip(table["protein"], table["feature"], table["n_top"], strict=True))
    assert got == [("P", 7, 4), ("Q", 7, 4), ("R", 3, 3)]


def test_feature_consistency_dense_matches_reference():
    rng = np.random.default_rng(3)
    a = rng.normal(scale=0.1, size=(4, D_SAE))
    a[:, 7] = 5.0
    a[1, 12] = 0.0
    table = at.feature_consistency({"P": result(a, 2)}, n=20)
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
    table = at.feature_consistency({"P": result(np.zeros((0, 5)), 1), "Q": result(np.zeros((2, 5)), 1)})
    assert table.empty and list(table.columns) == at.CONSISTENCY_COLUMNS


# --- universal_features ----------------------------------------------------------------------------------------------

def test_universal_features_planted():
    results = {("P", 6): planted(6)["P"], ("Q", 6): planted(6)["Q"], ("R", 6): planted(6)["R"],
               ("P", 2): planted(2)["P"], ("Q", 2): result(np.zeros((0, D_SAE)), 2)}
    table = at.universal_features(results)
    assert list(table.columns) == ["feature", "layer", "proteins", "freq_P", "freq_Q", "freq_R"]
    # Layer 2: Q has no mutants and R no results → nothing shared by two proteins.
    # Layer 6: 3 (Q 0.5, R 1.0) and 7 (P, Q); 11 fails (R 1/3 < 0.5).
    assert table[["feature", "layer", "proteins"]].values.tolist() == [[3, 6, "Q;R"], [7, 6, "P;Q"]]
    np.testing.assert_array_equal(table["freq_P"], [0.0, 1.0])
    np.testing.assert_array_equal(table["freq_Q"], [0.5, 1.0])
    np.testing.assert_array_equal(table["freq_R"], [1.0, 0.0])
    assert table["feature"].dtype == np.int64 and table["layer"].dtype == np.int64


def test_universal_features_ordering_and_nan():
    a = np.zeros((2, 10))
    a[:, 4] = 1.0
    a[:, 9] = 2.0
    b = a.copy()
    b[:, 9] = 0.0
    results = {("A", 3): result(a, 3), ("B", 3): result(a, 3), ("C", 3): result(b, 3),
               ("A", 1): result(a, 1), ("B", 1): result(a, 1), ("C", 1): result(np.zeros((0, 10)), 1)}
    table = at.universal_features(results)
    # Layer 1 first; within layer 3 feature 4 (3 proteins) before 9 (2 proteins).
    assert table[["feature", "layer", "proteins"]].values.tolist() == [
        [4, 1, "A;B"], [9, 1, "A;B"], [4, 3, "A;B;C"], [9, 3, "A;B"]]
    assert np.isnan(table["freq_C"].iloc[0]) and np.isnan(table["freq_C"].iloc[1])
    assert table["freq_C"].iloc[3] == 0.0


def test_universal_features_empty():
    table = at.universal_features({})
    assert table.empty and list(table.columns) == ["feature", "layer", "proteins"]
    table = at.universal_features({("P", 1): result(np.zeros((0, 4)), 1)})
    assert table.empty and list(table.columns) == ["feature", "layer", "proteins", "freq_P"]


# --- circuit_sizes ---------------------------------------------------------------------------------------------------

def sizes_frame(protein, layer, ks):
    frame = pd.DataFrame({"protein": protein, "layer": layer, "mutant": [f"A{i}C" for i in range(len(ks))],
                          "total_effect": np.linspace(-1, 1, len(ks)), "minimal_k": ks})
    frame["minimal_k"] = frame["minimal_k"].astype("Int64")
    return frame


def test_circuit_sizes_concat_and_dtypes():
    a = sizes_frame("P", 2, [1, None, 3])
    b = sizes_frame("Q", 4, [5])
    c = a.assign(minimal_k=[1.0, np.nan, 3.0], layer=6)  # as read back from a CSV
    table = at.circuit_sizes([a, b, c])
    assert list(table.columns) == at.SIZE_COLUMNS
    assert table["protein"].tolist() == ["P"] * 3 + ["Q"] + ["P"] * 3
    assert table["layer"].tolist() == [2, 2, 2, 4, 6, 6, 6]
    assert str(table["minimal_k"].dtype) == "Int64" and table["layer"].dtype == np.int64
    assert table["total_effect"].dtype == np.float64
    assert table["minimal_k"].isna().tolist() == [False, True, False, False, False, True, False]
    assert table["minimal_k"].dropna().tolist() == [1, 3, 5, 1, 3]
    empty = at.circuit_sizes([])
    assert empty.empty and list(empty.columns) == at.SIZE_COLUMNS and str(empty["minimal_k"].dtype) == "Int64"


def test_circuit_sizes_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\('P', layer 2\).*missing"):
        at.circuit_sizes([sizes_frame("P", 2, [1]).drop(columns="total_effect")])
    with pytest.raises(ValueError, match=r"\('P', layer 2\).*minimal_k"):
        at.circuit_sizes([sizes_frame("P", 2, [1]).assign(minimal_k=[1.5])])


# --- determinism -----------------------------------------------------------------------------------------------------

def test_tables_are_deterministic(tmp_path):
    results = {(p, layer): r for layer in (6, 2) for p, r in planted(layer).items()}
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        at.ig_concentration(results).to_csv(tmp_path / run / "c.csv", index=False)
        at.feature_consistency(planted()).to_csv(tmp_path / run / "f.csv", index=False)
        at.universal_features(results).to_csv(tmp_path / run / "u.csv", index=False)
        at.circuit_sizes([sizes_frame("P", 2, [1, None])]).to_csv(tmp_path / run / "s.csv", index=False)
    for name in ("c.csv", "f.csv", "u.csv", "s.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_modules_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, esmsae.attribution_tables, esmsae.attribution_figures; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
