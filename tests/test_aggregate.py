"""Aggregation of patching tables, checked against hand computations on small made-up tables."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from esmsae.aggregate import (
    PATCH_COLUMNS,
    PROGRESSION_COLUMNS,
    TOP_COLUMNS,
    VALIDATION_COLUMNS,
    control_validation,
    layer_progression,
    top_mutations,
)


def patch(mutant, feature, control, effect, wt_latent=0.0, mut_latent=0.0, layer=1):
    """One patching row; only the columns aggregation reads carry meaning."""
    return {"mutant": mutant, "position": mutant[1:-1], "layer": layer, "feature": feature, "control": control,
            "wt_pre": wt_latent, "mut_pre": mut_latent, "wt_latent": wt_latent, "mut_latent": mut_latent,
            "patched_value": mut_latent, "baseline_score": -1.0, "patched_score": -1.0 + effect,
            "effect": effect, "k": 8, "space": "latent"}


def table(rows):
    return pd.DataFrame(rows, columns=PATCH_COLUMNS)


def small_table():
    """Two mutants with real patches, one (G3H) with no real rows.

    real |effect| = 0.5, 0.2, 1.0 with |Δ latent| = 1.0, 0.5, 2.0; noop all 0;
    stable |effect| = 0.01, 0.02, 0.03; random |effect| = 0.1, 0.3.
    """
    return table([
        patch("A1C", 0, "real", -0.5, 0.0, 1.0),
        patch("A1C", 1, "real", 0.2, 0.5, 0.0),
        patch("D2E", 3, "real", 1.0, 0.0, 2.0),
        patch("A1C", 0, "noop", 0.0), patch("A1C", 1, "noop", 0.0), patch("D2E", 3, "noop", 0.0),
        patch("A1C", 7, "stable", 0.01), patch("A1C", 8, "stable", -0.02), patch("D2E", 9, "stable", 0.03),
        patch("A1C", 20, "random", 0.1), patch("D2E", 21, "random", -0.3),
        patch("G3H", 9, "stable", 0.0),
    ])


# --- control_validation -------------------------------------------------------------------

def test_control_validation_matches_hand_computation():
    out = control_validation({("P", 1): small_table()})
    assert list(out.columns) == VALIDATION_COLUMNS
    assert list(out["control"]) == ["real", "noop", "stable", "random"]
    by = out.set_index("control")

    real = [0.5, 0.2, 1.0]
    mean = sum(real) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in real) / 2)
    assert by.loc["real", "n"] == 3
    assert by.loc["real", "mean_abs_effect"] == pytest.approx(mean, abs=1e-15)
    assert by.loc["real", "std_abs_effect"] == pytest.approx(std, abs=1e-15)
    assert by.loc["real", "median_abs_effect"] == 0.5
    assert np.isnan(by.loc["real", "mwu_u"]) and np.isnan(by.loc["real", "mwu_p"])

    assert by.loc["noop", "n"] == 3
    assert by.loc["noop", "mean_abs_effect"] == 0.0
    assert by.loc["noop", "std_abs_effect"] == 0.0
    assert by.loc["stable", "n"] == 4
    assert by.loc["stable", "mean_abs_effect"] == pytest.approx(0.015, abs=1e-15)
    assert by.loc["stable", "median_abs_effect"] == pytest.approx(0.015, abs=1e-15)
    assert by.loc["random", "mean_abs_effect"] == pytest.approx(0.2, abs=1e-15)

    # U counts pairs (real, control) with real > control (ties ½): every real value beats all
    # 3 noop and all 4 stable values (9 and 12); against random, all three beat 0.1 and only
    # 0.5 and 1.0 beat 0.3 (5).
    assert by.loc["noop", "mwu_u"] == 9.0
    assert by.loc["stable", "mwu_u"] == 12.0
    assert by.loc["random", "mwu_u"] == 5.0
    for control, values in {"noop": [0, 0, 0], "stable": [0.01, 0.02, 0.03, 0.0], "random": [0.1, 0.3]}.items():
        expected = stats.mannwhitneyu(real, values, alternative="two-sided")
        assert by.loc[control, "mwu_p"] == pytest.approx(expected.pvalue, rel=1e-12)


def test_control_validation_empty_sides_and_order():
    only_noop = table([patch("A1C", 0, "noop", 0.0)])
    tables = {("Q", 3): small_table(), ("P", 2): table([]), ("Q", 1): only_noop, ("P", 1): small_table()}
    out = control_validation(tables)
    assert list(zip(out["protein"], out["layer"], strict=True))[::4] == [("Q", 1), ("Q", 3), ("P", 1), ("P", 2)]
    assert len(out) == 16

    q1 = out[(out["protein"] == "Q") & (out["layer"] == 1)].set_index("control")
    assert q1.loc["real", "n"] == 0 and np.isnan(q1.loc["real", "mean_abs_effect"])
    assert q1.loc["noop", "n"] == 1 and np.isnan(q1.loc["noop", "std_abs_effect"])  # n < 2
    assert q1[["mwu_u", "mwu_p"]].isna().all().all()  # no real side

    p2 = out[(out["protein"] == "P") & (out["layer"] == 2)]
    assert (p2["n"] == 0).all()
    assert p2[["mean_abs_effect", "std_abs_effect", "median_abs_effect", "mwu_u", "mwu_p"]].isna().all().all()


def test_control_validation_rejects_bad_tables():
    bad = small_table()
    bad.loc[0, "control"] = "sham"
    with pytest.raises(ValueError, match="sham"):
        control_validation({("P", 1): bad})
    with pytest.raises(ValueError, match="missing columns"):
        control_validation({("P", 1): small_table().drop(columns="effect")})
    bad = small_table()
    bad.loc[0, "effect"] = np.nan
    with pytest.raises(ValueError, match="'P', layer 1"):
        control_validation({("P", 1): bad})


def test_empty_input():
    assert list(control_validation({}).columns) == VALIDATION_COLUMNS
    assert list(layer_progression({}).columns) == PROGRESSION_COLUMNS
    assert list(top_mutations({}, {}, 3).columns) == TOP_COLUMNS
    assert len(top_mutations({}, {}, 3)) == 0


# --- layer_progression --------------------------------------------------------------------

def test_layer_progression_counts_and_spearman():
    rng = np.random.default_rng(3)
    delta, effect = rng.random(7), rng.normal(size=7)
    layer2 = table([patch(f"A{i}C", i, "real", float(effect[i]), 0.0, float(delta[i])) for i in range(7)])
    out = layer_progression({("P", 1): small_table(), ("P", 2): layer2})
    assert list(out.columns) == PROGRESSION_COLUMNS
    first, second = out.iloc[0], out.iloc[1]

    assert first["n_mutants"] == 3  # G3H has no real rows but is a mutant of the table
    assert first["n_patches"] == 3
    assert first["mean_abs_effect"] == pytest.approx(1.7 / 3, abs=1e-15)
    assert first["median_abs_effect"] == 0.5
    assert first["spearman_rho"] == pytest.approx(1.0)  # |Δ| 1.0, 0.5, 2.0 ranks as |effect| 0.5, 0.2, 1.0

    expected = stats.spearmanr(delta, np.abs(effect))
    assert second["n_mutants"] == 7 and second["n_patches"] == 7
    assert second["spearman_rho"] == pytest.approx(expected.statistic, rel=1e-12)
    assert second["spearman_p"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert -1 < second["spearman_rho"] < 1


def test_layer_progression_nan_cases_without_warnings():
    two = table([patch("A1C", 0, "real", 0.5, 0, 1), patch("A1C", 1, "real", 0.1, 0, 2)])
    constant_delta = table([patch("A1C", f, "real", 0.1 * (f + 1), 0.0, 1.0) for f in range(4)])
    constant_effect = table([patch("A1C", f, "real", -0.3, 0.0, f + 1.0) for f in range(4)])
    tables = {("P", 1): two, ("P", 2): constant_delta, ("P", 3): constant_effect, ("P", 4): table([])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = layer_progression(tables)
    assert out[["spearman_rho", "spearman_p"]].isna().all().all()
    assert list(out["n_patches"]) == [2, 4, 4, 0]
    assert list(out["n_mutants"]) == [1, 1, 1, 0]
    assert np.isnan(out.iloc[3]["mean_abs_effect"])


# --- top_mutations ------------------------------------------------------------------------

def scores_for(mutants, dms):
    return pd.DataFrame({"mutant": mutants, "position": [m[1:-1] for m in mutants], "wt": [m[0] for m in mutants],
                         "mut": [m[-1] for m in mutants], "wt_marginal": [-float(i) for i in range(len(mutants))],
                         "dms_score": dms, "selected": True})


def top_tables():
    layer1 = table([
        patch("A1C", 0, "real", 0.2, layer=1),
        patch("D2E", 5, "real", -0.7, layer=1),   # ties with D2E layer 2 feature 0: layer 1 wins
        patch("F4G", 7, "real", -0.4, layer=1),   # ties with F4G feature 2 at the same layer: feature 2 wins
        patch("F4G", 2, "real", 0.4, layer=1),
        patch("A1C", 9, "stable", 100.0, layer=1),  # controls never count
        patch("K5L", 9, "random", 50.0, layer=1),
    ])
    layer2 = table([
        patch("A1C", 3, "real", -0.9, layer=2),   # A1C's largest
        patch("D2E", 0, "real", 0.7, layer=2),
        patch("H6I", 1, "real", 0.05, layer=2),
    ])
    other = table([patch("M1N", 4, "real", 0.3, layer=1), patch("M1N", 6, "real", 0.1, layer=1)])
    return {("P", 2): layer2, ("Z", 1): other, ("P", 1): layer1}


def test_top_mutations_picks_joins_orders():
    scores = {"P": scores_for(["A1C", "D2E", "F4G", "K5L"], [1.5, -2.0, 0.25, 9.0]),
              "Z": scores_for(["M1N"], [0.75])}
    out = top_mutations(top_tables(), scores, top_n=10)
    assert list(out.columns) == TOP_COLUMNS
    assert list(out["protein"]) == ["P", "P", "P", "P", "Z"]
    assert list(out["mutant"]) == ["A1C", "D2E", "F4G", "H6I", "M1N"]
    assert list(out["layer"]) == [2, 1, 1, 2, 1]
    assert list(out["feature"]) == [3, 5, 2, 1, 4]
    assert list(out["effect"]) == [-0.9, -0.7, 0.4, 0.05, 0.3]
    assert list(out["abs_effect"]) == [0.9, 0.7, 0.4, 0.05, 0.3]
    assert list(out["dms_score"][:3]) == [1.5, -2.0, 0.25]
    assert list(out["wt_marginal"][:3]) == [0.0, -1.0, -2.0]
    assert np.isnan(out["dms_score"][3]) and np.isnan(out["wt_marginal"][3])  # H6I is not in the scores
    assert out["dms_score"][4] == 0.75


def test_top_mutations_respects_top_n():
    scores = {"P": scores_for(["A1C", "D2E", "F4G"], [1.0, 2.0, 3.0]), "Z": scores_for(["M1N"], [0.0])}
    out = top_mutations(top_tables(), scores, top_n=2)
    assert list(zip(out["protein"], out["mutant"], strict=True)) == [("P", "A1C"), ("P", "D2E"), ("Z", "M1N")]
    assert len(top_mutations(top_tables(), scores, top_n=0)) == 0
    with pytest.raises(ValueError, match="top_n"):
        top_mutations(top_tables(), scores, top_n=-1)
    with pytest.raises(ValueError, match="'Z'"):
        top_mutations(top_tables(), {"P": scores["P"]}, top_n=2)


def test_top_mutations_ignores_row_order():
    scores = {"P": scores_for(["A1C", "D2E", "F4G"], [1.0, 2.0, 3.0]), "Z": scores_for(["M1N"], [0.0])}
    shuffled = {key: t.sample(frac=1.0, random_state=5).reset_index(drop=True) for key, t in top_tables().items()}
    a = top_mutations(top_tables(), scores, top_n=10).to_csv(index=False)
    b = top_mutations(shuffled, scores, top_n=10).to_csv(index=False)
    assert a == b


# --- determinism --------------------------------------------------------------------------

def test_outputs_are_deterministic():
    def tables():
        return {("S", 1): small_table(), ("Q", 2): table([]), **top_tables()}

    scores = {"P": scores_for(["A1C", "D2E"], [1.0, 2.0]), "Z": scores_for(["M1N"], [0.0]),
              "S": scores_for(["D2E"], [0.5])}
    for build in (control_validation, layer_progression, lambda t: top_mutations(t, scores, 3)):
        first = build(tables()).to_csv(index=False)
        second = build(tables()).to_csv(index=False)
        assert first == second
        assert first.count("\n") > 1


def test_layer_progression_counts_selected_mutants_without_rows():
    """A selected mutant whose patches changed nothing has no rows; the selected count still includes it."""
    tables = {("P", 1): small_table(), ("Q", 1): table([])}
    plain = layer_progression(tables)
    counted = layer_progression(tables, selected={"P": 9, "Q": 4})
    assert counted["n_mutants"].tolist() == [9, 4]
    assert plain["n_mutants"].tolist()[1] == 0
    pd.testing.assert_series_equal(plain["n_patches"], counted["n_patches"])
