"""Minimal circuits: sufficiency and necessity curves, the minimal size read off them, negligible mutants."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.api import LayerMeta
from esmsae.analyses.circuits import circuit_curve, curves_table, top_k_patches
from esmsae.analyses.ig import attribute
from esmsae.analyses.patching import changed_features, patch_protein
from esmsae.inputs.mutations import parse_mutant
from esmsae.pipeline.columns import CURVE_COLUMNS, SIZE_COLUMNS, read_table
from esmsae.tables.circuits import circuit_sizes_from_curves, minimal_size

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
                         "space": "latent"}, columns=CURVE_COLUMNS)


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
    assert sizes[["protein", "layer", "k", "d_sae", "space"]].drop_duplicates().values.tolist() == [
        ["P", 4, 8, 96, "latent"]]
    # recover 0.5 (±0.5): A1C's r_1 = 0.5 is on the bound → n 1, feature 7; C1C's r_1 = 0.2 no, r_2 = 0.4 no, r_3 yes.
    looser = circuit_sizes_from_curves(curves, "P", circuit_size_settings(recover=0.5, min_effect=0.0))
    assert looser["n_features"].tolist() == [1, 1, 3] and looser["features"].tolist() == ["7", "1", "4;5;6"]
    with pytest.raises(ValueError, match="P B1C: n_features"):
        circuit_sizes_from_curves(curves.drop(index=5), "P", circuit_size_settings())


def test_negligible_mutants_get_no_size(splices):
    """The same measured curves, read with a min_effect just above |F|: negligible, no size, curves unchanged."""
    view = view_of(splices[3], MUTANTS[0])
    curve = circuit_curve(view, circuit_settings(max_k=40), ranked(view))
    curves = curves_table([curve], LayerMeta(protein="P", layer=3, k=8, d_sae=96), "latent")
    sized = circuit_sizes_from_curves(curves, "P", circuit_size_settings(min_effect=0.0))
    assert not sized["negligible"].iloc[0] and not pd.isna(sized["n_features"].iloc[0])
    assert sized["n_features"].iloc[0] == minimal_size(curve.recovered_fraction, 0.9)
    small = circuit_sizes_from_curves(curves, "P", circuit_size_settings(min_effect=abs(curve.full_effect) * 1.01))
    assert small["negligible"].iloc[0] and pd.isna(small["n_features"].iloc[0])


def test_tables_record_settings_and_round_trip(splices, tmp_path):
    view = view_of(splices[2], MUTANTS[1])
    curve = circuit_curve(view, circuit_settings(max_k=3), ranked(view))
    meta = LayerMeta(protein="DNJA1_HUMAN", layer=2, k=8, d_sae=96)
    curves = curves_table([curve], meta, "latent")
    assert list(curves.columns) == CURVE_COLUMNS and curves["n_features"].tolist() == [0, 1, 2, 3]
    assert (curves[["layer", "k", "d_sae", "space"]].drop_duplicates().values.tolist() == [[2, 8, 96, "latent"]])
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
