"""Minimal circuits: sufficiency and necessity curves, the minimal size read off them, negligible mutants."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.api import LayerMeta
from esmsae.analyses.arrays import Attributions
from esmsae.analyses.circuits import (
    CIRCUITS,
    circuit_curve,
    curves_table,
    ranked_by_ig,
    read_ig,
    summary,
    top_k_patches,
    write_curves,
)
from esmsae.analyses.ig import attribute
from esmsae.analyses.patching import changed_features, patch_protein
from esmsae.inputs.mutations import parse_mutant
from esmsae.pipeline.columns import CURVE_COLUMNS, SAE_SETTINGS, SIZE_COLUMNS, read_table
from esmsae.pipeline.errors import InputError
from esmsae.tables.circuits import circuit_sizes_from_curves, minimal_size

from .analysis_stubs import LinearEngine, code, rule_block, runs_analysis, stub_view, two_site_view
from .conftest import (
    LAYERS,
    WT,
    circuit_settings,
    circuit_size_settings,
    ig_settings,
    patch_settings,
    splice_every_layer,
    view_of,
)
from .reference import hooked_logits, score_from_logits

SEQ = WT["DNJA1_HUMAN"]
MUTANTS = [parse_mutant(t, SEQ) for t in ("Y3A", "L7P", "K20E", "F41S", "G64W", "Y3A:F41S")]


@pytest.fixture(scope="module")
def splices(lm, saes):
    return splice_every_layer(lm, saes, SEQ)


def ranked(view):
    return attribute(view, ig_settings(steps=8, space=view.space)).attribution


@pytest.mark.parametrize("layer", LAYERS)
def test_curve_end_points_are_exact(splices, layer):
    """r_0 = 0 and c_0 = 1 (nothing / everything patched); in latent space, with every changed
    feature in, r = 1 and c = 0 exactly (z' = z_mut, and z' = z_wt)."""
    for mutant in MUTANTS:
        view = view_of(splices[layer], mutant)
        attribution = ranked(view)
        curve = circuit_curve(view, circuit_settings(max_k=40), attribution)
        assert curve.n_features.tolist() == list(range(41))
        assert curve.full_effect != 0.0
        assert curve.recovered_fraction[0] == 0.0 and curve.complement_fraction[0] == 1.0
        n_changed = len(changed_features(view))
        assert curve.recovered_fraction[n_changed] == 1.0 and curve.complement_fraction[n_changed] == 0.0
        order = torch.argsort(attribution.abs(), descending=True, stable=True)
        assert curve.feature[0] == -1 and curve.feature[1:].tolist() == order[:40].tolist()


def test_pre_space_curves_have_the_same_full_effect(splices):
    """TopK(pre_mut) is z_mut, so patching every pre-activation gives latent space's full effect, bit for bit."""
    for mutant in MUTANTS[:3]:
        latent, pre = view_of(splices[2], mutant), view_of(splices[2], mutant, space="pre")
        a = circuit_curve(latent, circuit_settings(max_k=5), ranked(latent))
        b = circuit_curve(pre, circuit_settings(space="pre", max_k=5), ranked(pre))
        assert a.full_effect == b.full_effect and b.recovered_fraction[0] == 0.0
        assert b.complement_fraction[0] == 1.0


@pytest.mark.parametrize("layer", LAYERS)
def test_sufficiency_and_necessity_equal_fair_esm_forward(lm, splices, layer):
    """S_n and S_−n against a hooked fair-esm forward with the latents rebuilt by hand."""
    mutant = MUTANTS[5]  # two sites
    view = view_of(splices[layer], mutant)
    attribution = ranked(view)
    curve = circuit_curve(view, circuit_settings(max_k=4), attribution)
    order = torch.argsort(attribution.abs(), descending=True, stable=True)
    base = score_from_logits(hooked_logits(lm, SEQ, layer, {}), lm, mutant)
    sae, wt, mut = view.engine.sae, view.wt, view.mut
    for n in (1, 3):
        top = order[:n]
        sufficient, necessary = wt.z.clone(), mut.z.clone()
        sufficient[:, top] = mut.z[:, top]  # the top-n at mutant values, the rest at WT
        necessary[:, top] = wt.z[:, top]  # every feature but the top-n at mutant values
        for z, score in ((sufficient, curve.patched_score[n]), (necessary, curve.complement_score[n])):
            vecs = sae.decode(z, wt.mu, wt.sigma) + wt.error
            logits = hooked_logits(lm, SEQ, layer, {s.pos: vecs[i] for i, s in enumerate(mutant.sites)})
            assert abs(score_from_logits(logits, lm, mutant) - score) <= 1e-5
    assert abs(curve.baseline_score - base) <= 1e-5


def test_minimal_size_within_the_band_both_ways():
    # recover 0.9: within ±0.1 of 1. 1.3 overshoots by 30 %: not a recovery; 0.95 is.
    assert minimal_size(np.array([0.0, 0.5, 1.3, 0.95]), 0.9) == 3
    assert math.isnan(minimal_size(np.array([0.0, 0.89, 1.11]), 0.9))
    assert minimal_size(np.array([0.0, 1.1]), 0.9) == 1  # on the bound counts
    assert minimal_size(np.array([0.0, 3.4, 1.0]), 0.9) == 2  # the seed's 3.40 at n = 1 is not a circuit
    assert minimal_size(np.array([0.0, 0.5, 0.6]), 0.5) == 1  # recover 0.5: within ±0.5
    assert math.isnan(minimal_size(np.array([np.nan, np.nan]), 0.9))


def curves_of(recovered, features, full_effect, mutant="A1C"):
    """A hand-made curves table: r_n for n = 0.., the feature joining at each n >= 1."""
    n = len(recovered)
    return pd.DataFrame({"mutant": mutant, "n_features": range(n), "feature": [pd.NA, *features],
                         "patched_score": 0.0, "recovered_fraction": recovered, "complement_score": 0.0,
                         "complement_fraction": 0.0, "full_effect": full_effect, "layer": 4, "k": 8, "d_sae": 96,
                         "space": "latent", "activations": "fair-esm"}, columns=CURVE_COLUMNS)


def test_sizes_read_off_hand_made_curves():
    # A1C: r = 0, 0.5, 1.3, 0.95 joined by 7, 2, 9 → n 3 (1.3 overshoots), r 0.95, features 2;7;9.
    # B1C: |F| = 0.01 < 0.05 → negligible, no size even though r_1 = 1.
    # C1C: r never within ±0.1 → no size, not negligible.
    curves = pd.concat([curves_of([0.0, 0.5, 1.3, 0.95], [7, 2, 9], -0.4),
                        curves_of([0.0, 1.0, 1.0, 1.0], [1, 2, 3], 0.01, "B1C"),
                        curves_of([0.0, 0.2, 0.4, 0.6], [5, 6, 4], 0.3, "C1C")], ignore_index=True)
    sizes = circuit_sizes_from_curves(curves, "P", circuit_size_settings(recover=0.9, min_effect=0.05))
    assert list(sizes.columns) == SIZE_COLUMNS and str(sizes["n_features"].dtype) == "Int64"
    assert sizes["mutant"].tolist() == ["A1C", "B1C", "C1C"]
    assert sizes["negligible"].tolist() == [False, True, False]
    assert sizes["n_features"].tolist() == [3, pd.NA, pd.NA]
    np.testing.assert_array_equal(sizes["recovered_fraction"], [0.95, np.nan, np.nan])
    assert sizes["features"].tolist() == ["2;7;9", "", ""]
    assert sizes["full_effect"].tolist() == [-0.4, 0.01, 0.3]
    assert sizes[["protein", "layer", *SAE_SETTINGS]].drop_duplicates().values.tolist() == [
        ["P", 4, 8, 96, "latent", "fair-esm"]]
    # recover 0.5 (±0.5): A1C's r_1 = 0.5 is on the bound → n 1, feature 7; C1C's r_1 = 0.2 no, r_2 = 0.4 no, r_3 yes.
    looser = circuit_sizes_from_curves(curves, "P", circuit_size_settings(recover=0.5, min_effect=0.0))
    assert looser["n_features"].tolist() == [1, 1, 3] and looser["features"].tolist() == ["7", "1", "4;5;6"]
    with pytest.raises(ValueError, match="P B1C: n_features"):
        circuit_sizes_from_curves(curves.drop(index=5), "P", circuit_size_settings())


def test_negligible_mutants_get_no_size(splices):
    """The same measured curves, read with a min_effect just above |F|: negligible, no size, curves unchanged."""
    view = view_of(splices[3], MUTANTS[0])
    curve = circuit_curve(view, circuit_settings(max_k=40), ranked(view))
    curves = curves_table([curve], LayerMeta(protein="P", layer=3, k=8, d_sae=96, activations="interprot"), "latent")
    sized = circuit_sizes_from_curves(curves, "P", circuit_size_settings(min_effect=0.0))
    assert not sized["negligible"].iloc[0] and not pd.isna(sized["n_features"].iloc[0])
    assert sized["n_features"].iloc[0] == minimal_size(curve.recovered_fraction, 0.9)
    small = circuit_sizes_from_curves(curves, "P", circuit_size_settings(min_effect=abs(curve.full_effect) * 1.01))
    assert small["negligible"].iloc[0] and pd.isna(small["n_features"].iloc[0])


def test_tables_record_settings_and_round_trip(splices, tmp_path):
    view = view_of(splices[2], MUTANTS[1])
    curve = circuit_curve(view, circuit_settings(max_k=3), ranked(view))
    meta = LayerMeta(protein="DNJA1_HUMAN", layer=2, k=8, d_sae=96, activations="interprot")
    curves = curves_table([curve], meta, "latent")
    assert list(curves.columns) == CURVE_COLUMNS and curves["n_features"].tolist() == [0, 1, 2, 3]
    assert (curves[["layer", *SAE_SETTINGS]].drop_duplicates().values.tolist() == [[2, 8, 96, "latent", "interprot"]])
    assert pd.isna(curves["feature"].iloc[0]) and curves["feature"].iloc[1:].tolist() == curve.feature[1:].tolist()
    curves.to_csv(tmp_path / "c.csv", index=False)
    back = read_table(tmp_path / "c.csv", "circuit_curves")  # sizes read off the file equal those of the table
    settings = circuit_size_settings(min_effect=0.0, recover=0.5)
    pd.testing.assert_frame_equal(circuit_sizes_from_curves(back, "DNJA1_HUMAN", settings),
                                  circuit_sizes_from_curves(curves, "DNJA1_HUMAN", settings))


def test_one_feature_circuit_equals_the_single_feature_patch(splices):
    splice = splices[2]
    mutant = MUTANTS[1]
    view = view_of(splice, mutant)
    attribution = ranked(view)
    curve = circuit_curve(view, circuit_settings(max_k=3), attribution)
    top = int(torch.argmax(attribution.abs()))
    table = patch_protein(splice, [mutant], patch_settings())
    row = table[(table["control"] == "real") & (table["feature"] == top)]
    assert len(row) == 1
    assert curve.patched_score[1] == float(row["patched_score"].iloc[0])


def test_top_k_patches_orders_by_absolute_attribution():
    start, end = torch.zeros(1, 4), torch.ones(1, 4)
    rows = top_k_patches(start, end, torch.tensor([0.1, -3.0, 2.0, 0.0]), max_k=3)
    assert rows[:, 0].tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]]
    rest = top_k_patches(end, start, torch.tensor([0.1, -3.0, 2.0, 0.0]), max_k=2)  # the complement rows
    assert rest[:, 0].tolist() == [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1]]


# ---- hand-made views (tests/analysis_stubs.py): no model, a linear score, every number by hand ----------------

# Latent-space single-feature effects of the shared two-site case: f1 −2, f3 −6, f4 10 (F = 2, S(m) = −2).
# Ranked by |A| = |[0, −1, 0, −3, 5, 0]|: f4, f3, f1, then the ties at 0 in index order f0, f2, f5
# (ranked by signed A it would be f4, f0, f2, ...; ascending, f0, f2, f5 first).
HAND_A = torch.tensor([0.0, -1.0, 0.0, -3.0, 5.0, 0.0])


def test_curves_of_a_hand_made_two_site_mutant():
    """n 0: nothing patched, S_0 = S(m) = −2, r 0; everything, S_−0 = −2 + 2 = 0, c 1.
    n 1 (f4): S_1 = −2 + 10 = 8, r = 10/2 = 5; S_−1 = −2 + (−2 − 6) = −10, c = −8/2 = −4.
    n 2 (+f3): S_2 = −2 + 4 = 2, r = 2; S_−2 = −2 − 2 = −4, c = −1.
    n 3 = |changed| (+f1): S_3 = 0, r = 1; S_−3 = −2, c = 0; n 4..6 (f0, f2, f5 do not move): the same.
    max_k 10 is capped at d_sae = 6."""
    curve = circuit_curve(two_site_view(), circuit_settings(max_k=10), HAND_A)
    assert curve.mutant == "K2A:G6W" and curve.n_features.tolist() == list(range(7))
    assert curve.feature.tolist() == [-1, 4, 3, 1, 0, 2, 5] and curve.feature.dtype == np.int64  # indices
    assert curve.baseline_score == -2.0 and curve.full_effect == 2.0
    assert curve.patched_score.tolist() == [-2.0, 8.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    assert curve.recovered_fraction.tolist() == [0.0, 5.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert curve.complement_score.tolist() == [0.0, -10.0, -4.0, -2.0, -2.0, -2.0, -2.0]
    assert curve.complement_fraction.tolist() == [1.0, -4.0, -1.0, 0.0, 0.0, 0.0, 0.0]
    short = circuit_curve(two_site_view(), circuit_settings(max_k=2), HAND_A)
    assert short.n_features.tolist() == [0, 1, 2] and short.feature.tolist() == [-1, 4, 3]
    assert short.recovered_fraction.tolist() == [0.0, 5.0, 2.0] and short.complement_fraction.tolist() == [1, -4, -1]
    # Weights halved: F = 1 exactly, each r_n and c_n equal to the effect itself.
    unit = circuit_curve(two_site_view(scale=0.5), circuit_settings(max_k=3), HAND_A)
    assert unit.full_effect == 1.0 and unit.recovered_fraction.tolist() == [0.0, 5.0, 2.0, 1.0]
    assert unit.complement_fraction.tolist() == [1.0, -4.0, -1.0, 0.0]


def test_pre_space_curve_of_a_hand_made_two_site_mutant():
    """Pre space: n 1 writes f4's pre 2.5 at s2, TopK pushes f3 out: S_1 = −2 + 3·(−2) + 4·2.5 = 2, r = 4/2 = 2."""
    curve = circuit_curve(two_site_view(space="pre"), circuit_settings(max_k=1, space="pre"), HAND_A)
    assert curve.full_effect == 2.0 and curve.patched_score.tolist() == [-2.0, 2.0]
    assert curve.recovered_fraction.tolist() == [0.0, 2.0]


def test_zero_full_effect_gives_no_fractions():
    """c = 1 at both sites for f0 and −1 for f1, which swap (1, 2 → 2, 1): F = 1 − 1 = 0, so r and c are NaN
    while the scores are still reported (S_1 = S(m) + 1 with f0, ranked first by |A|, patched alone)."""
    view = stub_view("K2A", code([[1.0, 2.0]], positions=[2]), code([[2.0, 1.0]], positions=[2]),
                     LinearEngine([[1.0, 1.0]], base=0.5, k=2))
    curve = circuit_curve(view, circuit_settings(max_k=2), torch.tensor([2.0, -1.0]))
    assert curve.full_effect == 0.0 and curve.baseline_score == 0.5
    assert np.isnan(curve.recovered_fraction).all() and np.isnan(curve.complement_fraction).all()
    assert len(curve.recovered_fraction) == len(curve.complement_fraction) == 3
    assert curve.patched_score.tolist() == [0.5, 1.5, 0.5] and curve.complement_score.tolist() == [0.5, -0.5, 0.5]


def test_top_k_patches_ties_and_cap():
    """Ties in |A| keep index order (24 features, |A| alternating 1 and 0: the top 3 are 0, 2, 4, not whatever
    an unstable sort picks at this size); max_k above d_sae gives d_sae + 1 rows."""
    a = torch.tensor([1.0 if j % 2 == 0 else 0.0 for j in range(24)])
    rows = top_k_patches(torch.zeros(1, 24), torch.ones(1, 24), a, max_k=3)
    assert [torch.nonzero(r[0]).flatten().tolist() for r in rows] == [[], [0], [0, 2], [0, 2, 4]]
    assert top_k_patches(torch.zeros(1, 4), torch.ones(1, 4), torch.tensor([0.0, 1.0, 0.0, 0.0]), 9).shape == (5, 1, 4)
    curve = circuit_curve(stub_view("K2A", code([[0.0] * 24], positions=[2]), code([[1.0] * 24], positions=[2]),
                                    LinearEngine([[1.0] * 24], k=24)), circuit_settings(max_k=3), a)
    assert curve.feature.tolist() == [-1, 0, 2, 4]


def test_curves_table_and_file_of_a_hand_made_curve(tmp_path):
    """Feature 0 joining the circuit is 0, not missing (only n = 0 has none); rows in mutant order, 0.. index;
    the settings in every row; rule find_circuits writes its output `curves` and it reads back equal."""
    curve = circuit_curve(two_site_view(), circuit_settings(max_k=4), HAND_A)
    other = circuit_curve(two_site_view(mutant="K2A:G6A"), circuit_settings(max_k=4), HAND_A)
    meta = LayerMeta(protein="P", layer=3, k=2, d_sae=6, activations="fair-esm")
    table = curves_table([curve, other], meta, "pre")
    assert list(table.columns) == CURVE_COLUMNS and table.index.tolist() == list(range(10))
    assert table["mutant"].tolist() == ["K2A:G6W"] * 5 + ["K2A:G6A"] * 5
    assert table["n_features"].tolist() == [0, 1, 2, 3, 4] * 2
    assert str(table["feature"].dtype) == "Int64" and pd.isna(table["feature"].iloc[0])
    assert table["feature"].iloc[1:5].tolist() == [4, 3, 1, 0]
    assert table["patched_score"].tolist()[:5] == [-2.0, 8.0, 2.0, 0.0, 0.0]
    assert table["complement_score"].tolist()[:5] == [0.0, -10.0, -4.0, -2.0, -2.0]
    assert table["recovered_fraction"].tolist()[:5] == [0.0, 5.0, 2.0, 1.0, 1.0]
    assert table["complement_fraction"].tolist()[:5] == [1.0, -4.0, -1.0, 0.0, 0.0]
    assert (table["full_effect"] == 2.0).all()
    assert table[["layer", *SAE_SETTINGS]].drop_duplicates().values.tolist() == [[3, 2, 6, "pre", "fair-esm"]]
    assert list(curves_table([], meta, "latent").columns) == CURVE_COLUMNS
    assert CIRCUITS.rule == "find_circuits" and runs_analysis("find_circuits", "CIRCUITS")
    assert "curves=" in rule_block("find_circuits")
    write_curves([curve, other], {"curves": tmp_path / "c.csv"}, circuit_settings(space="pre"), meta)
    pd.testing.assert_frame_equal(read_table(tmp_path / "c.csv", "circuit_curves"), table, check_dtype=False)
    assert summary(curve) == "full effect 2, top-4 recover r = 1"
    assert summary(circuit_curve(two_site_view(), circuit_settings(max_k=2), HAND_A)) == (
        "full effect 2, top-2 recover r = 2")  # r at the largest n, 2 (not r_1 = 5)
    assert CIRCUITS.summary is summary and CIRCUITS.run is ranked_by_ig and CIRCUITS.context is read_ig


def test_ig_attributions_read_for_the_selected_mutants(tmp_path):
    """read_ig: the file's rows by mutant name, as float32; a file of other mutants (or another order) refused."""
    a = Attributions(mutant=np.array(["K2A", "G6W"]), attribution=np.array([[0.5, -1.0], [2.0, 0.25]]),
                     abs_delta=np.ones((2, 2)), error_attribution=np.zeros(2), total_effect=np.zeros(2),
                     completeness_error=np.zeros(2), quadrature_delta=np.zeros(2), steps=4, rule="gausslegendre",
                     space="latent", k=2, d_sae=2, error_node=True, layer=1, activations="interprot")
    a.write(tmp_path / "ig.npz")
    inputs = {"npz": tmp_path / "ig.npz", "scores": tmp_path / "scores.csv"}
    mutants = [parse_mutant("K2A", "MKVLAGW"), parse_mutant("G6W", "MKVLAGW")]
    ig = read_ig(inputs, mutants, circuit_settings())
    assert list(ig) == ["K2A", "G6W"] and all(v.dtype == torch.float32 for v in ig.values())
    assert ig["K2A"].tolist() == [0.5, -1.0] and ig["G6W"].tolist() == [2.0, 0.25]
    for wrong in (mutants[::-1], mutants[:1]):
        with pytest.raises(InputError, match="ig.npz: its mutants do not match the selection in .*scores.csv; "
                                             "rerun integrate_gradients"):
            read_ig(inputs, wrong, circuit_settings())
    view = two_site_view()
    by_name = {"K2A:G6W": HAND_A, "K2A": torch.zeros(6)}
    assert ranked_by_ig(view, circuit_settings(max_k=1), by_name).feature.tolist() == [-1, 4]


def test_top_k_patches_stays_on_the_device_of_its_inputs():
    """The rows are built where the inputs live (a GPU in a real run): on PyTorch's data-less `meta` device, a
    mask made on the CPU instead could not be combined with them. Shape (min(max_k, d_sae) + 1, S, d_sae)."""
    start, end = torch.zeros(2, 4, device="meta"), torch.ones(2, 4, device="meta")
    rows = top_k_patches(start, end, torch.tensor([1.0, 0.0, 2.0, 0.0], device="meta"), max_k=2)
    assert rows.device.type == "meta" and rows.shape == (3, 2, 4)
