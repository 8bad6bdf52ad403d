"""Findings (METHOD.md "Findings"): every verdict worked out by hand, one of each kind, and each test at its bar."""

from __future__ import annotations

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
    """A patching table of two mutants, each with one real patch and one random control."""
    rows = [("m0", "real", 0.5), ("m0", "random", 0.125), ("m1", "real", -0.25), ("m1", "random", 0.0625)]
    return pd.DataFrame([{"mutant": m, "position": "1", "layer": layer, "feature": 0, "control": control,
                          "wt_pre": 0.0, "mut_pre": 1.0, "wt_latent": 0.0, "mut_latent": 1.0, "patched_value": 1.0,
                          "baseline_score": 0.0, "patched_score": effect, "effect": effect, "k": 8, "d_sae": 16,
                          "space": "latent", "activations": forward} for m, control, effect in rows],
                        columns=TABLES["patching"])


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
