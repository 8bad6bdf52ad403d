"""Aggregation of patching tables, checked against hand computations on small made-up tables.

The mutant is the unit (METHOD.md "Concentration and universality", last point): each mutant
contributes one value, its mean over its own patches. The tables below give mutants different
numbers of patches, so a pooled mean over patches differs from the mean over mutants, and a test
fails if an implementation pools.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from esmsae.pipeline.columns import (
    PATCH_COLUMNS,
    PROGRESSION_COLUMNS,
    TABLES,
    VALIDATION_COLUMNS,
    one_forward,
    read_table,
)
from esmsae.pipeline.columns import TOP_MUTATIONS_COLUMNS as TOP_COLUMNS
from esmsae.pipeline.errors import InputError
from esmsae.tables.patching import control_validation, layer_progression, tabulate_patching, top_mutations
from esmsae.tables.scoring import correlate_dms, dms_correlation
from esmsae.tables.statistics import spearman
from tests.attribution_cases import write_labels

K, D_SAE, SPACE, FORWARD = 8, 64, "latent", "interprot"


def patch(mutant, feature, control, effect, wt_latent=0.0, mut_latent=0.0, layer=1, k=K, d_sae=D_SAE, space=SPACE,
          activations=FORWARD):
    """One patching row; only the columns aggregation reads carry meaning."""
    return {"mutant": mutant, "position": mutant[1:-1], "layer": layer, "feature": feature, "control": control,
            "wt_pre": wt_latent, "mut_pre": mut_latent, "wt_latent": wt_latent, "mut_latent": mut_latent,
            "patched_value": mut_latent, "baseline_score": -1.0, "patched_score": -1.0 + effect,
            "effect": effect, "k": k, "d_sae": d_sae, "space": space, "activations": activations}


def table(rows):
    return pd.DataFrame(rows, columns=PATCH_COLUMNS)


def test_column_lists_are_the_registry():
    assert VALIDATION_COLUMNS == TABLES["control_validation"]
    assert PROGRESSION_COLUMNS == TABLES["layer_progression"]
    assert TOP_COLUMNS == TABLES["top_mutations"]
    assert PATCH_COLUMNS.index("d_sae") == PATCH_COLUMNS.index("k") + 1
    for columns in (VALIDATION_COLUMNS, PROGRESSION_COLUMNS, TOP_COLUMNS):
        assert columns[-4:] == ["k", "d_sae", "space", "activations"]


def test_every_table_records_the_forward():
    """Every registered table has an ``activations`` column (the forward the SAEs read), read back as text."""
    assert [kind for kind, columns in TABLES.items() if "activations" not in columns] == []


def test_a_table_of_an_older_version_says_how_to_remake_it(tmp_path):
    """A patching table written before the forward was recorded: the error names the file, the column, and the fix."""
    table([patch("A1C", 0, "real", 0.5)]).drop(columns="activations").to_csv(tmp_path / "P_L1.csv", index=False)
    with pytest.raises(InputError, match=r"P_L1\.csv: not a patching table \(missing column\(s\) activations; if an "
                                         r"older version of the pipeline wrote it, delete it so that its rule runs "
                                         r"again\)$"):
        read_table(tmp_path / "P_L1.csv", "patching")


def test_one_forward_of_a_combined_tables_inputs():
    assert one_forward(["fair-esm", "fair-esm", np.nan, None], "t") == "fair-esm"  # missing values are no forward
    assert one_forward([], "t") is None and one_forward([np.nan], "t") is None
    assert one_forward(pd.Series(["interprot"] * 3), "t") == "interprot"
    with pytest.raises(InputError, match=r"^site share: inputs measured on different forwards \(activations "
                                         r"fair-esm, interprot\); a study reads every SAE on one \(config key "
                                         r"sae.activations\)$"):
        one_forward(["interprot", np.nan, "fair-esm"], "site share")


# --- control_validation -------------------------------------------------------------------

def validation_table(**settings):
    """Three mutants with 3, 1 and 2 real patches, and a fourth (G4H) with only a stable patch.

    |effect| per mutant (signs vary: the tables take absolute values):
      real:   A1C 0.6, 0.3, 0.3 (mean 0.4); D2E 1.0 (mean 1.0); F3G 0.2, 0.0 (mean 0.1)
      noop:   all 0 (3 + 1 + 2 patches)
      stable: A1C 0.02, 0.0 (mean 0.01); D2E 0.05; F3G 0.0, 0.0 (mean 0); G4H 0.07
      random: A1C 0.1, 0.0, 0.2 (mean 0.1); D2E 0.0; F3G 0.3, 0.1 (mean 0.2)
    """
    def p(mutant, feature, control, effect):
        return patch(mutant, feature, control, effect, **settings)

    return table([
        p("A1C", 0, "real", -0.6), p("A1C", 1, "real", 0.3), p("A1C", 2, "real", -0.3),
        p("D2E", 3, "real", 1.0),
        p("F3G", 4, "real", 0.2), p("F3G", 5, "real", 0.0),
        p("A1C", 0, "noop", 0.0), p("A1C", 1, "noop", 0.0), p("A1C", 2, "noop", 0.0),
        p("D2E", 3, "noop", 0.0), p("F3G", 4, "noop", 0.0), p("F3G", 5, "noop", 0.0),
        p("A1C", 7, "stable", -0.02), p("A1C", 8, "stable", 0.0), p("D2E", 9, "stable", 0.05),
        p("F3G", 10, "stable", 0.0), p("F3G", 11, "stable", 0.0), p("G4H", 12, "stable", 0.07),
        p("A1C", 20, "random", 0.1), p("A1C", 21, "random", 0.0), p("A1C", 22, "random", -0.2),
        p("D2E", 23, "random", 0.0),
        p("F3G", 24, "random", -0.3), p("F3G", 25, "random", 0.1),
    ])


def sem(values):
    """std(ddof=1)/√n written out."""
    m = sum(values) / len(values)
    return math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1)) / math.sqrt(len(values))


def test_control_validation_mutant_is_the_unit():
    out = control_validation({("P", 1): validation_table()})
    assert list(out.columns) == VALIDATION_COLUMNS
    assert list(out["control"]) == ["real", "noop", "stable", "random"]
    by = out.set_index("control")

    # real: per-mutant means 0.4, 1.0, 0.1 → mean 0.5 (pooling the 6 patches would give 2.4/6 = 0.4),
    # median 0.4 (pooled: 0.3), sem √(0.42/2)/√3 = √0.07.
    real = by.loc["real"]
    assert real["n_mutants"] == 3 and real["n_patches"] == 6
    assert real["mean_abs_effect"] == pytest.approx(0.5, abs=1e-12)
    assert real["mean_abs_effect"] != pytest.approx(0.4, abs=1e-3)  # not pooled over patches
    assert real["sem_abs_effect"] == pytest.approx(math.sqrt(0.07), abs=1e-12)
    assert real["sem_abs_effect"] == pytest.approx(sem([0.4, 1.0, 0.1]), abs=1e-12)
    assert real["median_abs_effect"] == pytest.approx(0.4, abs=1e-12)
    assert real["frac_nonzero"] == pytest.approx(5 / 6)  # F3G's second patch is exactly 0
    assert real["frac_mutants_nonzero"] == 1.0
    assert np.isnan(real["wilcoxon_p"])

    noop = by.loc["noop"]
    assert noop["n_mutants"] == 3 and noop["n_patches"] == 6
    assert noop["mean_abs_effect"] == 0.0 and noop["sem_abs_effect"] == 0.0 and noop["median_abs_effect"] == 0.0
    assert noop["frac_nonzero"] == 0.0 and noop["frac_mutants_nonzero"] == 0.0

    # stable: per-mutant 0.01, 0.05, 0.0 and G4H 0.07 → 4 mutants, mean 0.13/4 (pooled: 0.14/6);
    # nonzero patches: A1C's −0.02, D2E's 0.05, G4H's 0.07 (3 of 6); mutants with any: 3 of 4.
    stable = by.loc["stable"]
    assert stable["n_mutants"] == 4 and stable["n_patches"] == 6
    assert stable["mean_abs_effect"] == pytest.approx(0.13 / 4, abs=1e-12)
    assert stable["sem_abs_effect"] == pytest.approx(sem([0.01, 0.05, 0.0, 0.07]), abs=1e-12)
    assert stable["median_abs_effect"] == pytest.approx(0.03, abs=1e-12)  # (0.01 + 0.05) / 2
    assert stable["frac_nonzero"] == pytest.approx(3 / 6)
    assert stable["frac_mutants_nonzero"] == pytest.approx(3 / 4)

    # random: per-mutant 0.1, 0.0, 0.2 → mean 0.1 (pooled: 0.7/6), sem 0.1/√3.
    random = by.loc["random"]
    assert random["n_mutants"] == 3 and random["n_patches"] == 6
    assert random["mean_abs_effect"] == pytest.approx(0.1, abs=1e-12)
    assert random["sem_abs_effect"] == pytest.approx(0.1 / math.sqrt(3), abs=1e-12)
    assert random["median_abs_effect"] == pytest.approx(0.1, abs=1e-12)
    assert random["frac_nonzero"] == pytest.approx(4 / 6)
    assert random["frac_mutants_nonzero"] == pytest.approx(2 / 3)

    for column in ("k", "d_sae", "space", "activations"):
        assert out[column].tolist() == [{"k": K, "d_sae": D_SAE, "space": SPACE, "activations": FORWARD}[column]] * 4
    assert out["n_mutants"].dtype == np.int64 and out["n_patches"].dtype == np.int64


def test_control_validation_wilcoxon_on_paired_mutant_differences():
    by = control_validation({("P", 1): validation_table()}).set_index("control")
    # Paired per-mutant differences real − control over the mutants with both (G4H has no real patch):
    #   noop:   0.4, 1.0, 0.1        — all positive, n = 3: exact two-sided p = 2 · 1/8 = 0.25
    #   stable: 0.39, 0.95, 0.1      — all positive: 0.25 as well
    #   random: 0.3, 1.0, −0.1       — ranks 2, 3, 1: W− = 1, P(W ≤ 1) = 2/8, two-sided 0.5
    expected = {"noop": ([0.4, 1.0, 0.1], 0.25), "stable": ([0.39, 0.95, 0.1], 0.25),
                "random": ([0.3, 1.0, -0.1], 0.5)}
    for control, (differences, p) in expected.items():
        assert by.loc[control, "wilcoxon_p"] == pytest.approx(p, rel=1e-12), control
        assert by.loc[control, "wilcoxon_p"] == pytest.approx(stats.wilcoxon(differences).pvalue, rel=1e-12)


def test_control_validation_wilcoxon_nan_cases():
    # Two mutants, stable patches equal to the real ones (every difference 0 → NaN); random only for
    # A1C (one pair → NaN); noop differences 0.2, 0.4 (both positive: scipy's exact p 0.5).
    t = table([
        patch("A1C", 0, "real", 0.2), patch("D2E", 1, "real", -0.4),
        patch("A1C", 0, "noop", 0.0), patch("D2E", 1, "noop", 0.0),
        patch("A1C", 0, "stable", -0.2), patch("D2E", 1, "stable", 0.4),
        patch("A1C", 5, "random", 0.1),
    ])
    by = control_validation({("P", 1): t}).set_index("control")
    assert np.isnan(by.loc["stable", "wilcoxon_p"])
    assert np.isnan(by.loc["random", "wilcoxon_p"])
    assert by.loc["noop", "wilcoxon_p"] == pytest.approx(stats.wilcoxon([0.2, 0.4]).pvalue, rel=1e-12)
    assert by.loc["noop", "wilcoxon_p"] == pytest.approx(0.5, rel=1e-12)
    assert by.loc["random", "n_mutants"] == 1 and np.isnan(by.loc["random", "sem_abs_effect"])


def test_control_validation_empty_sides_and_order():
    only_noop = table([patch("A1C", 0, "noop", 0.0, k=16, d_sae=128, space="pre", activations="fair-esm")])
    tables = {("Q", 3): validation_table(k=16, d_sae=128, space="pre", activations="fair-esm"), ("P", 2): table([]),
              ("Q", 1): only_noop,
              ("P", 1): validation_table()}
    out = control_validation(tables)
    assert list(zip(out["protein"], out["layer"], strict=True))[::4] == [("Q", 1), ("Q", 3), ("P", 1), ("P", 2)]
    assert list(out["control"]) == ["real", "noop", "stable", "random"] * 4
    assert len(out) == 16

    q1 = out[(out["protein"] == "Q") & (out["layer"] == 1)].set_index("control")
    assert q1.loc["real", "n_mutants"] == 0 and q1.loc["real", "n_patches"] == 0
    assert np.isnan(q1.loc["real", "mean_abs_effect"]) and np.isnan(q1.loc["real", "frac_nonzero"])
    assert q1.loc["noop", "n_mutants"] == 1 and q1.loc["noop", "mean_abs_effect"] == 0.0
    assert np.isnan(q1.loc["noop", "sem_abs_effect"])  # one mutant
    assert q1["wilcoxon_p"].isna().all()  # no real side
    assert (q1["k"] == 16).all() and (q1["d_sae"] == 128).all() and (q1["space"] == "pre").all()
    assert (q1["activations"] == "fair-esm").all()

    q3 = out[(out["protein"] == "Q") & (out["layer"] == 3)]
    assert (q3["k"] == 16).all() and (q3["d_sae"] == 128).all() and (q3["space"] == "pre").all()
    assert (q3["activations"] == "fair-esm").all()
    p1 = out[(out["protein"] == "P") & (out["layer"] == 1)]
    assert (p1["k"] == K).all() and (p1["d_sae"] == D_SAE).all() and (p1["space"] == SPACE).all()
    assert (p1["activations"] == FORWARD).all()

    p2 = out[(out["protein"] == "P") & (out["layer"] == 2)]
    assert (p2["n_mutants"] == 0).all() and (p2["n_patches"] == 0).all()
    value_columns = ["mean_abs_effect", "sem_abs_effect", "median_abs_effect", "frac_nonzero",
                     "frac_mutants_nonzero", "wilcoxon_p", "k", "d_sae", "space", "activations"]
    assert p2[value_columns].isna().all().all()


def test_control_validation_rejects_bad_tables():
    bad = validation_table()
    bad.loc[0, "control"] = "sham"
    with pytest.raises(ValueError, match="sham"):
        control_validation({("P", 1): bad})
    with pytest.raises(ValueError, match="missing columns"):
        control_validation({("P", 1): validation_table().drop(columns="effect")})
    with pytest.raises(ValueError, match="missing columns.*d_sae"):
        control_validation({("P", 1): validation_table().drop(columns="d_sae")})
    bad = validation_table()
    bad.loc[0, "effect"] = np.nan
    with pytest.raises(ValueError, match="'P', layer 1"):
        control_validation({("P", 1): bad})


def test_empty_input():
    assert list(control_validation({}).columns) == VALIDATION_COLUMNS
    assert list(layer_progression({}).columns) == PROGRESSION_COLUMNS
    assert list(top_mutations({}, {}, 3).columns) == TOP_COLUMNS
    assert len(control_validation({})) == 0 and len(layer_progression({})) == 0
    assert len(top_mutations({}, {}, 3)) == 0


# --- spearman -----------------------------------------------------------------------------

def test_spearman_by_hand_and_nan_cases():
    # x ranks 1..4, y ranks 2, 1, 4, 3: d = −1, 1, −1, 1, Σd² = 4, ρ = 1 − 6·4/(4·15) = 0.6
    rho, p = spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0]))
    assert rho == pytest.approx(0.6)
    assert p == pytest.approx(stats.spearmanr([1, 2, 3, 4], [2, 1, 4, 3]).pvalue)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]))[0] == pytest.approx(-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in (([1.0, 2.0], [1.0, 2.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [5.0] * 3),
                     ([], [])):
            assert all(np.isnan(spearman(np.array(x), np.array(y))))


# --- layer_progression --------------------------------------------------------------------

def progression_table():
    """Four mutants with 3, 4, 2 and 3 real patches (|Δ latent|, effect), plus controls that never count.

    A1C: (1, 0.1), (2, −0.2), (3, 0.3)           ρ = 1,   mean |effect| 0.2
    D2E: (1, 2.0), (2, −1.0), (3, 4.0), (4, 3.0)  ρ = 0.6 (ranks 2, 1, 4, 3), mean 2.5
    F3G: (1, 0.5), (2, 0.7)                       2 patches: no ρ, mean 0.6
    G4H: (1, 0.1), (1, 0.2), (1, 0.6)             |Δ| constant: no ρ, mean 0.3
    |Δ| comes from either direction of the latent change.
    """
    rows = [
        patch("A1C", 0, "real", 0.1, 0.0, 1.0), patch("A1C", 1, "real", -0.2, 2.0, 0.0),
        patch("A1C", 2, "real", 0.3, 0.5, 3.5),
        patch("D2E", 0, "real", 2.0, 0.0, 1.0), patch("D2E", 1, "real", -1.0, 0.0, -2.0),
        patch("D2E", 2, "real", 4.0, 3.0, 0.0), patch("D2E", 3, "real", 3.0, 0.0, 4.0),
        patch("F3G", 0, "real", 0.5, 0.0, 1.0), patch("F3G", 1, "real", 0.7, 0.0, 2.0),
        patch("G4H", 0, "real", 0.1, 0.0, 1.0), patch("G4H", 1, "real", -0.2, 1.0, 0.0),
        patch("G4H", 2, "real", 0.6, 0.0, 1.0),
        patch("A1C", 0, "noop", 0.0, 0.0, 1.0), patch("D2E", 9, "stable", 9.0), patch("F3G", 9, "random", -9.0),
        patch("H5I", 9, "stable", 0.01),  # a mutant with no real patches
    ]
    return table(rows)


def test_layer_progression_mutant_is_the_unit():
    out = layer_progression({("P", 1): progression_table()})
    assert list(out.columns) == PROGRESSION_COLUMNS
    row = out.iloc[0]
    assert row["n_mutants"] == 5  # H5I has rows (no real ones) and is a mutant of the table
    assert row["n_patches"] == 12
    # Per-mutant means 0.2, 2.5, 0.6, 0.3 → 0.9 (pooled over the 12 patches: 12.7/12);
    # deviations −0.7, 1.6, −0.3, −0.6: Σ² = 3.5, sem = √(3.5/3)/2; median (0.3 + 0.6)/2.
    assert row["mean_abs_effect"] == pytest.approx(0.9, abs=1e-12)
    assert row["sem_abs_effect"] == pytest.approx(math.sqrt(3.5 / 3) / 2, abs=1e-12)
    assert row["median_abs_effect"] == pytest.approx(0.45, abs=1e-12)
    # ρ: mean of A1C's 1 and D2E's 0.6 = 0.8; sem = |1 − 0.6|/√2/√2 = 0.2.
    assert row["n_rho_mutants"] == 2
    assert row["spearman_rho"] == pytest.approx(0.8, abs=1e-12)
    assert row["spearman_sem"] == pytest.approx(0.2, abs=1e-12)
    # The per-mutant mean is not the ρ of all real patches pooled.
    real = progression_table().query("control == 'real'")
    pooled = stats.spearmanr(np.abs(real["mut_latent"] - real["wt_latent"]), real["effect"].abs()).statistic
    assert abs(pooled - 0.8) > 0.05
    assert (row["k"], row["d_sae"], row["space"], row["activations"]) == (K, D_SAE, SPACE, FORWARD)
    assert out["n_mutants"].dtype == np.int64 and out["n_rho_mutants"].dtype == np.int64


def test_layer_progression_multi_site_delta_is_summed():
    # |Δ| = Σ_sites |mut − wt|: 0.6 + 0.6 = 1.2, 1.0 + 0 = 1.0, 0.3 + 0 = 0.3 rank as |effect| 0.3, 0.2, 0.1
    # (ρ = 1). The largest or first site alone (0.6, 1.0, 0.3) would give ρ = 0.5.
    rows = [patch("A1C:D2E", f, "real", e, "0:0", m) for f, (e, m) in
            enumerate([(0.3, "0.6:-0.6"), (-0.2, "1.0:0"), (0.1, "0:0.3")])]
    for row in rows:
        row["position"] = "1:2"
    out = layer_progression({("P", 1): table(rows)})
    assert out["spearman_rho"].iloc[0] == pytest.approx(1.0)
    assert out["n_rho_mutants"].iloc[0] == 1 and np.isnan(out["spearman_sem"].iloc[0])


def test_layer_progression_nan_cases_without_warnings():
    two = table([patch("A1C", 0, "real", 0.5, 0, 1), patch("A1C", 1, "real", 0.1, 0, 2)])
    constant_delta = table([patch("A1C", f, "real", 0.1 * (f + 1), 0.0, 1.0) for f in range(4)])
    constant_effect = table([patch("A1C", f, "real", -0.3, 0.0, f + 1.0) for f in range(4)])
    tables = {("P", 1): two, ("P", 2): constant_delta, ("P", 3): constant_effect, ("P", 4): table([])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = layer_progression(tables)
    assert out[["spearman_rho", "spearman_sem"]].isna().all().all()
    assert list(out["n_rho_mutants"]) == [0, 0, 0, 0]
    assert list(out["n_patches"]) == [2, 4, 4, 0]
    assert list(out["n_mutants"]) == [1, 1, 1, 0]
    assert out["sem_abs_effect"].isna().all()  # one mutant each
    assert out["mean_abs_effect"].iloc[0] == pytest.approx(0.3)  # (0.5 + 0.1)/2
    assert np.isnan(out.iloc[3]["mean_abs_effect"]) and np.isnan(out.iloc[3]["median_abs_effect"])
    assert out.iloc[3][["k", "d_sae", "space", "activations"]].isna().all()


def test_layer_progression_counts_selected_mutants_without_rows():
    """A selected mutant whose patches changed nothing has no rows; the selected count still includes it."""
    tables = {("P", 1): progression_table(), ("Q", 1): table([])}
    plain = layer_progression(tables)
    counted = layer_progression(tables, selected={"P": 9, "Q": 4})
    assert counted["n_mutants"].tolist() == [9, 4]
    assert plain["n_mutants"].tolist() == [5, 0]
    pd.testing.assert_frame_equal(plain.drop(columns="n_mutants"), counted.drop(columns="n_mutants"))


def test_layer_progression_order_and_settings():
    tables = {("Q", 2): progression_table(), ("P", 3): table([patch("A1C", 0, "real", 0.5, layer=3, k=32,
                                                                    d_sae=4096, space="pre",
                                                                    activations="fair-esm")]),
              ("Q", 1): progression_table()}
    out = layer_progression(tables)
    assert list(zip(out["protein"], out["layer"], strict=True)) == [("Q", 1), ("Q", 2), ("P", 3)]
    assert out[["k", "d_sae", "space", "activations"]].values.tolist() == [
        [K, D_SAE, SPACE, FORWARD], [K, D_SAE, SPACE, FORWARD], [32, 4096, "pre", "fair-esm"]]


# --- top_mutations ------------------------------------------------------------------------

def scores_for(mutants, dms):
    """A scores table on the interprot forward (wt_marginal is its column; fair-esm's is the same here) of a WT as
    long as the highest mutated position, scored whole: tokens 0 .. L + 2 (BOS, the residues, EOS)."""
    wt_marginal = [-float(i) for i in range(len(mutants))]
    length = max(int(m[1:-1]) for m in mutants)
    return pd.DataFrame({"mutant": mutants, "position": [m[1:-1] for m in mutants], "wt": [m[0] for m in mutants],
                         "mut": [m[-1] for m in mutants], "wt_marginal": wt_marginal, "dms_score": dms,
                         "selected": True, "activations": "interprot", "wt_marginal_interprot": wt_marginal,
                         "wt_marginal_fair_esm": wt_marginal, "window_start": 0, "window_end": length + 2},
                        columns=TABLES["scores"])


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
        patch("A1C", 3, "real", -0.9, layer=2, d_sae=128),   # A1C's largest
        patch("D2E", 0, "real", 0.7, layer=2, d_sae=128),
        patch("H6I", 1, "real", 0.05, layer=2, d_sae=128),
    ])
    other = table([patch("M1N", 4, "real", 0.3, layer=1, k=16, space="pre", activations="fair-esm"),
                   patch("M1N", 6, "real", 0.1, layer=1, k=16, space="pre", activations="fair-esm")])
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
    # The settings come from the table of the layer each row was taken from.
    assert list(out["k"]) == [K, K, K, K, 16]
    assert list(out["d_sae"]) == [128, D_SAE, D_SAE, 128, D_SAE]
    assert list(out["space"]) == [SPACE, SPACE, SPACE, SPACE, "pre"]
    assert list(out["activations"]) == [FORWARD] * 4 + ["fair-esm"]


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
        return {("S", 1): validation_table(), ("Q", 2): table([]), ("S", 2): progression_table(), **top_tables()}

    scores = {"P": scores_for(["A1C", "D2E"], [1.0, 2.0]), "Z": scores_for(["M1N"], [0.0]),
              "S": scores_for(["D2E"], [0.5])}
    for build in (control_validation, layer_progression, lambda t: top_mutations(t, scores, 3)):
        first = build(tables()).to_csv(index=False)
        second = build(tables()).to_csv(index=False)
        assert first == second
        assert first.count("\n") > 1


# --- what a careful reviewer would get wrong (mutation testing, mutation/tables.md) -------------------------------

def test_empty_tables_keep_their_integer_columns():
    """With no tables at all, the count and index columns are still integers (not pandas' default object)."""
    validation, progression, top = control_validation({}), layer_progression({}), top_mutations({}, {}, 3)
    assert (validation["n_mutants"].dtype, validation["n_patches"].dtype) == (np.int64, np.int64)
    assert [progression[c].dtype for c in ("n_mutants", "n_patches", "n_rho_mutants")] == [np.int64] * 3
    assert (top["layer"].dtype, top["feature"].dtype) == (np.int64, np.int64)
    # And with rows: n_patches is an integer count too.
    assert layer_progression({("P", 1): progression_table()})["n_patches"].dtype == np.int64


def test_control_validation_empty_control_without_warnings():
    """A control with no patches at a layer gives NaN shares quietly (no 'mean of empty slice')."""
    only_noop = table([patch("A1C", 0, "noop", 0.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by = control_validation({("P", 1): only_noop}).set_index("control")
    assert np.isnan(by.loc["real", "frac_nonzero"]) and np.isnan(by.loc["random", "frac_nonzero"])
    assert by.loc["noop", "frac_nonzero"] == 0.0


def test_object_columns_are_read_as_numbers():
    """pd.concat with an empty table leaves numeric columns as object; the tables are the same numbers and types.

    Hand values as in the tests above: real mean |effect| 0.5 over mutants, A1C's top patch |−0.9| at layer 2.
    """
    def loose(t):
        return t.astype({"effect": object, "feature": object})

    tables = {("P", 1): validation_table()}
    pd.testing.assert_frame_equal(control_validation({k: loose(t) for k, t in tables.items()}),
                                  control_validation(tables))
    assert control_validation({("P", 1): loose(validation_table())})["mean_abs_effect"].iloc[0] == pytest.approx(0.5)
    progression = {("P", 1): progression_table()}
    pd.testing.assert_frame_equal(layer_progression({k: loose(t) for k, t in progression.items()}),
                                  layer_progression(progression))
    scores = {"P": scores_for(["A1C", "D2E", "F4G"], [1.0, 2.0, 3.0]), "Z": scores_for(["M1N"], [0.0])}
    loose_top = top_mutations({k: loose(t) for k, t in top_tables().items()}, scores, 10)
    pd.testing.assert_frame_equal(loose_top, top_mutations(top_tables(), scores, 10))
    assert loose_top["feature"].dtype == np.int64 and loose_top["effect"].dtype == np.float64
    assert (loose_top["layer"].iloc[0], loose_top["feature"].iloc[0], loose_top["effect"].iloc[0]) == (2, 3, -0.9)
    # A NaN effect in an object column is refused as such (not a TypeError from numpy).
    bad = loose(validation_table())
    bad.loc[0, "effect"] = None
    with pytest.raises(ValueError, match="'effect' has NaN"):
        control_validation({("P", 1): bad})


def test_layer_progression_delta_is_the_difference_not_the_sum():
    """|Δ| = |mut − wt|, with a nonzero WT latent: (3 → 4) 1, (0 → 2) 2, (1 → 4) 3 rank as |effect| 0.1, 0.2, 0.3
    (ρ = 1). |mut + wt| = 7, 2, 5 would rank them 3, 1, 2 (ρ = −0.5); the signed mut − wt of (4 → 1) below is −3."""
    rows = [patch("A1C", 0, "real", 0.1, 3.0, 4.0), patch("A1C", 1, "real", -0.2, 0.0, 2.0),
            patch("A1C", 2, "real", 0.3, 1.0, 4.0)]
    assert layer_progression({("P", 1): table(rows)})["spearman_rho"].iloc[0] == pytest.approx(1.0)
    # (4 → 1): |Δ| 3 is the largest, with the largest |effect|; signed −3 would be the smallest (ρ 0.5).
    rows = [patch("A1C", 0, "real", 0.1, 0.0, 1.0), patch("A1C", 1, "real", 0.2, 0.0, 2.0),
            patch("A1C", 2, "real", 0.3, 4.0, 1.0)]
    assert layer_progression({("P", 1): table(rows)})["spearman_rho"].iloc[0] == pytest.approx(1.0)


def test_layer_progression_selected_counts_only_the_proteins_it_names():
    """`selected` without Q: Q's n_mutants falls back to its table's distinct mutants (5 in progression_table)."""
    out = layer_progression({("P", 1): progression_table(), ("Q", 1): progression_table()}, selected={"P": 9})
    assert out["n_mutants"].tolist() == [9, 5]


def test_top_mutations_ties_between_mutants():
    """Equal |effect| in different mutants: the lower layer first, then the lower feature, then the mutant name.

    |effect| 0.5 everywhere: Y2Z at layer 1 comes before the layer-2 rows; among those, feature 1 (C3D) before
    feature 4; at layer 2 feature 4 the mutants tie again and go by name, A1B before W5X.
    """
    rows = table([patch("W5X", 4, "real", 0.5, layer=2), patch("C3D", 1, "real", -0.5, layer=2),
                  patch("A1B", 4, "real", 0.5, layer=2)])
    y = table([patch("Y2Z", 6, "real", 0.5, layer=1)])
    scores = {"P": scores_for(["A1B", "C3D", "W5X", "Y2Z"], [1.0, 2.0, 3.0, 4.0])}
    out = top_mutations({("P", 2): rows, ("P", 1): y}, scores, top_n=10)
    assert out["mutant"].tolist() == ["Y2Z", "C3D", "A1B", "W5X"]
    assert out["layer"].tolist() == [1, 2, 2, 2] and out["feature"].tolist() == [6, 1, 4, 4]


def test_top_mutations_labels_and_a_protein_without_patches():
    """Labels come from (layer, feature), "" where there is none (also with no labels at all); a protein whose
    tables are empty gives no rows and does not stop the proteins after it."""
    scores = {"P": scores_for(["A1C", "D2E", "F4G"], [1.0, 2.0, 3.0]), "Z": scores_for(["M1N"], [0.0])}
    tables = top_tables()
    labels = {(2, 3): "L-identity", (1, 5): "K/R-enriched", (2, 5): "not this layer"}
    out = top_mutations(tables, scores, top_n=10, labels=labels)
    # Rows: A1C (2, 3), D2E (1, 5), F4G (1, 2), H6I (2, 1), M1N (1, 4).
    assert out["label"].tolist() == ["L-identity", "K/R-enriched", "", "", ""]
    assert top_mutations(tables, scores, top_n=10)["label"].tolist() == [""] * 5
    empty_first = {("E", 1): table([]), ("Z", 1): tables[("Z", 1)]}
    out = top_mutations(empty_first, {"Z": scores["Z"]}, top_n=10)
    assert out["protein"].tolist() == ["Z"] and out["mutant"].tolist() == ["M1N"]


def test_top_mutations_rejects_non_integers_and_bad_scores():
    scores = {"P": scores_for(["A1C", "D2E", "F4G"], [1.0, 2.0, 3.0]), "Z": scores_for(["M1N"], [0.0])}
    for bad in (True, 2.0):
        with pytest.raises(ValueError, match="top_n must be a non-negative integer"):
            top_mutations(top_tables(), scores, top_n=bad)
    assert len(top_mutations(top_tables(), scores, top_n=np.int64(1))) == 2  # one per protein
    with pytest.raises(ValueError, match=r"scores table of 'P' lacks columns \['dms_score'\]"):
        top_mutations(top_tables(), {**scores, "P": scores["P"].drop(columns="dms_score")}, top_n=2)
    doubled = pd.concat([scores["P"], scores["P"].iloc[:1]], ignore_index=True)
    with pytest.raises(ValueError, match="scores table of 'P' lists a mutant more than once"):
        top_mutations(top_tables(), {**scores, "P": doubled}, top_n=2)


def test_top_mutations_scores_are_floats():
    """A scores table without DMS (all None, object dtype in pandas) and an object wt_marginal give float columns."""
    scores = {"P": scores_for(["A1C", "D2E", "F4G"], [None, None, None]).astype({"wt_marginal": object}),
              "Z": scores_for(["M1N"], [0.0])}
    out = top_mutations(top_tables(), scores, top_n=10)
    assert out["dms_score"].dtype == np.float64 and out["wt_marginal"].dtype == np.float64
    assert out["dms_score"].iloc[:4].isna().all()
    assert out["wt_marginal"].iloc[:3].tolist() == [0.0, -1.0, -2.0]  # scores_for: −(row index)


def test_tabulate_patching_rule(tmp_path):
    """The rule reads the tables, counts selected mutants from the scores' `selected` column, labels the top rows.

    Scores of P: 6 mutants, 4 selected (A1C, D2E, F3G, H5I) → n_mutants 4 at both layers. Top 2 of P over
    layers 1 (validation_table) and 2 (progression_table at layer 2): D2E 4.0 (layer 2, feature 2) and F3G 0.7
    (layer 2, feature 1); only (2, 2) has a label.
    """

    layer2 = progression_table().assign(layer=2)
    paths = {("P", 1): tmp_path / "P_L1.csv", ("P", 2): tmp_path / "P_L2.csv"}
    validation_table().to_csv(paths[("P", 1)], index=False)
    layer2.to_csv(paths[("P", 2)], index=False)
    mutants = ["A1C", "D2E", "F3G", "G4H", "H5I", "K6L"]
    scores = scores_for(mutants, [0.5, -1.5, 2.5, 3.5, 4.5, 5.5]).assign(selected=[True, True, True, False, True,
                                                                                   False])
    scores.to_csv(tmp_path / "P_scores.csv", index=False)
    write_labels(tmp_path / "labels.csv", {(2, 2): "L-identity", (1, 3): "other"})
    out = {name: tmp_path / f"{name}.csv" for name in ("validation", "progression", "top")}
    tabulate_patching(paths, {"P": tmp_path / "P_scores.csv"}, 2, tmp_path / "labels.csv", out)

    validation = read_table(out["validation"], "control_validation")
    assert validation["layer"].tolist() == [1] * 4 + [2] * 4
    assert validation["mean_abs_effect"].iloc[0] == pytest.approx(0.5)  # validation_table's real row
    progression = read_table(out["progression"], "layer_progression")
    assert progression["n_mutants"].tolist() == [4, 4] and progression["layer"].tolist() == [1, 2]
    assert progression["mean_abs_effect"].iloc[1] == pytest.approx(0.9)  # progression_table's per-mutant mean
    top = read_table(out["top"], "top_mutations")
    assert top["mutant"].tolist() == ["D2E", "F3G"] and top["feature"].tolist() == [2, 1]
    assert top["layer"].tolist() == [2, 2] and top["effect"].tolist() == [4.0, 0.7]
    assert top["label"].fillna("").tolist() == ["L-identity", ""]
    assert top["dms_score"].tolist() == [-1.5, 2.5] and top["wt_marginal"].tolist() == [-1.0, -2.0]


# --- dms_correlation ------------------------------------------------------------------------------------------------

def scores_table_of(mutants, wt_marginal, dms):
    """On the interprot forward, with the same WT-marginal under fair-esm: the hand values hold for both forwards."""
    return pd.DataFrame({"mutant": mutants, "position": "1", "wt": "A", "mut": "C", "wt_marginal": wt_marginal,
                         "dms_score": dms, "selected": True, "activations": "interprot",
                         "wt_marginal_interprot": wt_marginal, "wt_marginal_fair_esm": wt_marginal,
                         "window_start": 0, "window_end": 3}, columns=TABLES["scores"])


def test_dms_correlation_at_three_rows():
    """Exactly 3 rows with DMS are enough. wt [1, 2, 3] against dms [1, 3, 2]: d = 0, −1, 1, Σd² = 2,
    ρ = 1 − 6·2/(3·8) = 0.5. A row without DMS (NaN) does not count. Q: 2 singles (NaN) but 3 rows in all."""

    p = scores_table_of(["A1C", "D2E", "F3G", "H4I"], [1.0, 2.0, 3.0, 9.0], [1.0, 3.0, 2.0, np.nan])
    q = scores_table_of(["A1C", "D2E", "A1C:D2E"], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    both = dms_correlation({"P": p, "Q": q})
    assert list(both.columns) == TABLES["dms_correlation"]
    assert both["activations"].tolist() == ["interprot", "fair-esm"] * 4
    assert both["study_forward"].tolist() == [True, False] * 4
    for forward in ("interprot", "fair-esm"):  # the same WT-marginal under both: the same hand values
        out = both[both["activations"] == forward].reset_index(drop=True)
        assert out["protein"].tolist() == ["P", "P", "Q", "Q"] and out["rows"].tolist() == ["singles", "all"] * 2
        assert out["n"].tolist() == [3, 3, 2, 3]
        assert out["spearman"].iloc[0] == pytest.approx(0.5) and out["spearman"].iloc[1] == pytest.approx(0.5)
        assert out["p_value"].iloc[0] == pytest.approx(stats.spearmanr([1, 2, 3], [1, 3, 2]).pvalue)
        assert np.isnan(out["spearman"].iloc[2]) and np.isnan(out["p_value"].iloc[2])
        assert out["spearman"].iloc[3] == pytest.approx(-1.0)


def test_dms_correlation_refuses_fewer_than_three():

    two = scores_table_of(["A1C", "D2E", "F3G"], [1.0, 2.0, 3.0], [1.0, np.nan, 2.0])
    with pytest.raises(InputError, match="^P: fewer than 3 mutants with DMS scores; cannot correlate$"):
        dms_correlation({"P": two})
    empty = dms_correlation({})
    assert empty.empty and list(empty.columns) == TABLES["dms_correlation"]


def test_correlate_dms_rule(tmp_path):
    """The rule reads each protein's scores table and writes one table (hand values as in the test above)."""

    scores_table_of(["A1C", "D2E", "F3G"], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]).to_csv(tmp_path / "P.csv", index=False)
    scores_table_of(["A1C", "D2E", "F3G"], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]).to_csv(tmp_path / "Q.csv", index=False)
    correlate_dms({"Q": tmp_path / "Q.csv", "P": tmp_path / "P.csv"}, tmp_path / "out.csv")
    both = read_table(tmp_path / "out.csv", "dms_correlation")
    assert both["activations"].tolist() == ["interprot", "fair-esm"] * 4
    for forward in ("interprot", "fair-esm"):  # the same WT-marginal under both: the same hand values
        out = both[both["activations"] == forward]
        assert out["protein"].tolist() == ["Q", "Q", "P", "P"]
        assert out["spearman"].tolist() == pytest.approx([-1.0, -1.0, 0.5, 0.5])
        assert out["n"].tolist() == [3, 3, 3, 3]
