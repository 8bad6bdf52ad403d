"""Feature-set ablation against the assay (METHOD.md "Feature-set ablation against the assay"): the engine's
ablated scores against an independent forward, the sets, the frequency-matched nulls and the statistics by hand."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.ablation import (
    AblationContext,
    NullUndrawable,
    ablate,
    feature_sets,
    frequency_deciles,
    null_sets,
)
from esmsae.analyses.arrays import Attributions
from esmsae.config.parse import load
from esmsae.config.settings import AblationSettings
from esmsae.inputs.mutations import AMINO_ACIDS, all_single_mutants
from esmsae.model.sae import TopKSAE
from esmsae.model.splice import Splice
from esmsae.model.view import WTView
from esmsae.pipeline.columns import TABLES
from esmsae.pipeline.errors import InputError
from esmsae.tables.ablation import ablation_rows, empirical_p, row_statistics, spread

from .conftest import LAYERS, WT
from .reference import reference_logits

SEQ = WT["PR40A_HUMAN"]
EVERY = AblationSettings(sets=("circuit",), top_n=None, n_null=3, positions="every", seed=0)


def context_for(sets: dict[str, list[int]], nulls: dict[str, list[list[int]]], seq: str = SEQ) -> dict:
    """A job's context with its sets given by hand: every single of `seq`, no DMS."""
    singles = all_single_mutants(seq)
    index = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
    return {"prepared": AblationContext(
        sets=sets, nulls=nulls, mutants=[m.name for m in singles],
        positions=np.array([m.sites[0].pos for m in singles]),
        wt=np.array([index[m.sites[0].wt] for m in singles]), mut=np.array([index[m.sites[0].mut] for m in singles]),
        dms=np.full(len(singles), np.nan))}


def reference_scores(lm, sae: TopKSAE, layer: int, features: list[int], only: int | None = None) -> np.ndarray:
    """Every single's WT-marginal score with `features`' decoded contribution z_j(p)·w_dec_j·σ_p subtracted from
    h_p at every residue p (or only at residue `only`), through the forward's own independent reference."""
    tokens = lm.tokenize([SEQ])
    with torch.no_grad():
        h = lm.hidden(tokens, layer)[0]
        replace = {}
        for p in range(1, len(SEQ) + 1):
            if only is not None and p != only:
                continue
            _, z, _, sigma = sae.encode(h[p])
            removed = sum((z[j] * sae.w_dec[j] for j in features), torch.zeros_like(h[p])) * sigma
            replace[p] = h[p] - removed
        logp = torch.log_softmax(reference_logits(lm, SEQ, layer, replace).double(), -1)
    return np.array([float(logp[m.sites[0].pos, lm.token_index(m.sites[0].mut)]
                           - logp[m.sites[0].pos, lm.token_index(m.sites[0].wt)]) for m in all_single_mutants(SEQ)])


# -- the engine ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", LAYERS)
def test_ablating_a_set_equals_the_forward_with_its_contribution_removed_and_the_empty_set_changes_nothing(
        lms, saes, layer):
    lm = lms["interprot"]
    splice = Splice(lm, saes[layer], SEQ, layer)
    z = splice.residue_code().z
    active = torch.nonzero(z.sum(0) > 0).flatten().tolist()
    chosen = active[:3]
    out = ablate(WTView(engine=splice, unit="circuit"), EVERY,
                 context_for({"circuit": chosen}, {"circuit": [[], active[3:5], chosen[:1]]}))
    assert out.scores.shape == (4, 19 * len(SEQ))
    np.testing.assert_allclose(out.scores[0], reference_scores(lm, saes[layer], layer, chosen), atol=1e-5)
    np.testing.assert_allclose(out.scores[2], reference_scores(lm, saes[layer], layer, active[3:5]), atol=1e-5)
    assert np.array_equal(out.scores[1], out.clean)  # the empty set: exactly no change
    np.testing.assert_allclose(out.clean, reference_scores(lm, saes[layer], layer, []), atol=1e-5)
    assert not np.array_equal(out.scores[0], out.clean)


def test_a_set_that_never_fires_on_the_wt_changes_no_score(lms, saes):
    splice = Splice(lms["interprot"], saes[2], SEQ, 2)
    silent = torch.nonzero(splice.residue_code().z.sum(0) == 0).flatten().tolist()[:4]
    assert silent
    out = ablate(WTView(engine=splice, unit="circuit"), dataclasses.replace(EVERY, n_null=0),
                 context_for({"circuit": silent}, {"circuit": []}))
    assert np.array_equal(out.scores[0], out.clean)


def test_site_positions_ablate_only_at_the_scored_residue(lms, saes):
    lm, layer = lms["interprot"], 2
    splice = Splice(lm, saes[layer], SEQ, layer)
    z = splice.residue_code().z
    chosen = torch.nonzero(z.sum(0) > 0).flatten().tolist()[:4]
    out = ablate(WTView(engine=splice, unit="circuit"), dataclasses.replace(EVERY, n_null=0, positions="site"),
                 context_for({"circuit": chosen}, {"circuit": []}))
    for position in (1, 17, len(SEQ)):
        rows = [i for i, m in enumerate(all_single_mutants(SEQ)) if m.sites[0].pos == position]
        expected = reference_scores(lm, saes[layer], layer, chosen, only=position)[rows]
        np.testing.assert_allclose(out.scores[0, rows], expected, atol=1e-5)


def planted_identity_sae(lm, layer: int, residue: str, d_sae: int = 48, k: int = 4) -> tuple[TopKSAE, int]:
    """An SAE whose feature 0 fires at exactly the WT positions holding `residue` (planted): its encoder is the
    direction separating those normalized vectors from the others, its bias halfway between, scaled to win TopK."""
    with torch.no_grad():
        h = lm.hidden(lm.tokenize([SEQ]), layer)[0, 1:-1]
        x = (h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1e-5)
    on = torch.tensor([c == residue for c in SEQ])
    direction = x[on].mean(0) - x[~on].mean(0)
    score = x @ direction
    threshold = (score[on].min() + score[~on].max()) / 2
    assert score[on].min() > score[~on].max()  # separable at this layer
    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, lm.embed_dim, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    w_enc = w_dec.T.clone() * 0.01
    b_enc = torch.full((d_sae,), -1.0)
    w_enc[:, 0] = 100 * direction
    b_enc[0] = -100 * float(threshold)
    w_dec[0] = direction / direction.norm()
    return TopKSAE(w_enc, w_dec, b_enc, torch.zeros(lm.embed_dim), k=k), int(on.sum())


def test_a_planted_identity_feature_moves_its_residues_positions_most(lms):
    """Feature 0 fires only on the L positions of the WT: ablating it equals the hand computation, and the scores
    at L positions move most (attention spreads the change to the others: the ranking is asserted, not zeros)."""
    lm, layer = lms["interprot"], 1
    sae, n_on = planted_identity_sae(lm, layer, "L")
    splice = Splice(lm, sae, SEQ, layer)
    z = splice.residue_code().z
    assert torch.equal(z[:, 0] > 0, torch.tensor([c == "L" for c in SEQ])) and n_on >= 3
    out = ablate(WTView(engine=splice, unit="identity"), dataclasses.replace(EVERY, sets=("identity",), n_null=0),
                 context_for({"identity": [0]}, {"identity": []}))
    np.testing.assert_allclose(out.scores[0], reference_scores(lm, sae, layer, [0]), atol=1e-5)
    moved = np.abs(out.scores[0] - out.clean)
    positions = np.array([m.sites[0].pos for m in all_single_mutants(SEQ)])
    at_l = np.isin(positions, [i + 1 for i, c in enumerate(SEQ) if c == "L"])
    by_position = pd.Series(moved).groupby(positions).mean()
    l_positions = sorted({int(p) for p in positions[at_l]})
    assert by_position.loc[l_positions].min() > by_position.drop(l_positions).max()
    assert moved[~at_l].max() > 0  # the change spreads: not zero elsewhere


# -- the sets and their nulls ------------------------------------------------------------------------------------------
def test_frequency_deciles_rank_with_ties_to_the_lower_index():
    # 20 features, frequency = index // 2 reversed: deciles by rank, two features each.
    freq = np.array([9 - i // 2 for i in range(20)], dtype=float)
    deciles = frequency_deciles(freq)
    assert deciles.tolist() == [9 - i // 2 for i in range(20)]
    tied = frequency_deciles(np.zeros(20))
    assert tied.tolist() == [i // 2 for i in range(20)]  # all equal: by index


def test_null_sets_are_frequency_matched_and_exclude_the_set():
    deciles = np.array([i // 2 for i in range(20)])  # decile d = {2d, 2d + 1}
    rng = np.random.default_rng(0)
    for null in null_sets([0, 5], deciles, 25, rng):
        assert null == [1, 4]  # the only other member of each decile
    three = np.array([i // 3 for i in range(12)])  # decile d = {3d, 3d + 1, 3d + 2}
    draws = null_sets([0, 3], three, 200, np.random.default_rng(1))
    assert {tuple(d) for d in draws} == {(1, 4), (1, 5), (2, 4), (2, 5)}  # each member from its own decile
    with pytest.raises(NullUndrawable, match="decile"):
        null_sets([0, 1], deciles, 1, rng)  # decile 0 has nothing left
    same = null_sets([0, 3], three, 5, np.random.default_rng(7))
    assert same == null_sets([0, 3], three, 5, np.random.default_rng(7))  # seeded


def test_null_members_are_drawn_without_replacement_within_a_set():
    deciles = np.zeros(6, dtype=int)  # one decile
    for null in null_sets([0, 1], deciles, 50, np.random.default_rng(2)):
        assert len(set(null)) == 2 and not {0, 1} & set(null)


def ig_result(attribution: np.ndarray) -> Attributions:
    n, d = attribution.shape
    return Attributions(mutant=np.array([f"A{i}C" for i in range(1, n + 1)]), attribution=attribution,
                        abs_delta=np.abs(attribution), error_attribution=np.zeros(n), total_effect=np.ones(n),
                        completeness_error=np.zeros(n), quadrature_delta=np.zeros(n))


def test_feature_sets_by_hand():
    circuits = pd.DataFrame({"protein": ["P", "P", "P", "Q", "P"], "layer": [2, 2, 2, 2, 4],
                             "negligible": [False, False, True, False, False],
                             "features": ["3;1", "1;7", "9", "5", "8"]})
    universal = pd.DataFrame({"feature": [4, 6], "label": ["", ""], "layer": [2, 4], "proteins": ["P;Q", "P;Q"]})
    labels = pd.DataFrame({"layer": [2] * 10, "feature": range(10), "identity": [j in (0, 2) for j in range(10)]})
    # mean |A| over mutants: feature 6 (2.0), then 2 and 5 tie at 1.0 (lower index first), then 0 (0.5)
    attribution = np.zeros((2, 10))
    attribution[:, 6] = [2.0, -2.0]
    attribution[:, 2] = [1.0, 1.0]
    attribution[:, 5] = [0.0, 2.0]
    attribution[:, 0] = [0.5, -0.5]
    all_sets = AblationSettings(sets=("circuit", "universal", "identity", "top"), top_n=None, n_null=1,
                                positions="every", seed=0)
    sets = feature_sets("P", 2, 10, all_sets, circuits, universal, labels, ig_result(attribution))
    assert sets == {"circuit": [1, 3, 7], "universal": [4], "identity": [0, 2], "top": [2, 5, 6]}
    four = feature_sets("P", 2, 10, dataclasses.replace(all_sets, top_n=5), circuits, universal, labels,
                        ig_result(attribution))
    assert four["top"] == [0, 2, 5, 6]  # only 4 features have A != 0
    with pytest.raises(InputError, match=r"outside the SAE's 0\.\.9"):
        feature_sets("P", 2, 10, all_sets, circuits, universal.assign(feature=[12, 6]), labels,
                     ig_result(attribution))


def test_ablation_layers_must_have_circuits():
    config = {"outdir": "o", "esm_checkpoint": "m", "sae": {"dir": "s", "pattern": "l{layer}", "k": 4},
              "proteins": {"P": {"wt_seq": "MKV"}}, "mutations": {"source": "model"},
              "patching": {"layers": [1]}, "ig": {"layers": [2, 4]}}
    assert load(config).ablation_layers == (2, 4)
    with pytest.raises(InputError, match=r"ablation\.layers: layer\(s\) \[3\]"):
        load(config | {"ablation": {"layers": [2, 3]}})


# -- the statistics by hand ---------------------------------------------------------------------------------------
def test_empirical_p_counts_ties_as_at_least_as_extreme():
    null = np.array([-0.5, -0.3, -0.1, 0.0])
    assert empirical_p(-0.3, null) == 3 / 5   # (1 + #{−0.5, −0.3}) / (1 + 4)
    assert empirical_p(-0.6, null) == 1 / 5
    assert empirical_p(0.0, null) == 1.0
    assert np.isnan(empirical_p(float("nan"), null)) and np.isnan(empirical_p(0.0, np.array([])))


def test_null_spread_is_the_mean_and_5_to_95_percent():
    values = np.arange(21.0)
    assert spread(values) == (10.0, 1.0, 19.0)  # linear interpolation: index 0.05·20 = 1 and 0.95·20 = 19
    assert spread(np.array([0.0, 1.0])) == (0.5, 0.05, 0.95)
    assert all(np.isnan(spread(np.array([1.0, np.nan]))))


def test_row_statistics_by_hand():
    """clean 1..4, ablated swaps the last two, DMS decreasing: ρ_0 = −1, ρ_A = −0.8 (Σd² = 18 of the 4),
    Δρ = 0.2, ρ(clean, ablated) = 0.8, mean |Δ| = 0.5."""
    clean, ablated, dms = np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 4, 3]), np.array([4.0, 3, 2, 1])
    out = row_statistics(ablated, clean, dms)
    assert out["rho_0"] == pytest.approx(-1.0) and out["rho_a"] == pytest.approx(-0.8)
    assert out["delta_rho"] == pytest.approx(0.2) and out["rho_clean_ablated"] == pytest.approx(0.8)
    assert out["mean_abs_delta"] == 0.5
    no_dms = row_statistics(ablated, clean, np.full(4, np.nan))
    assert np.isnan(no_dms["rho_0"]) and np.isnan(no_dms["delta_rho"]) and no_dms["mean_abs_delta"] == 0.5


def test_ablation_rows_by_hand():
    """One set with three nulls over 5 singles; its p counts the nulls at most as good as it."""
    clean = np.array([1.0, 2, 3, 4, 5])
    dms = np.array([1.0, 2, 3, 4, 5])          # ρ_0 = 1
    rows = [np.array([5.0, 4, 3, 2, 1]),       # the set: ρ_A = −1, Δρ = −2
            np.array([1.0, 2, 3, 5, 4]),       # null: ρ = 0.9, Δρ = −0.1
            np.array([5.0, 4, 3, 2, 1]),       # null: as bad as the set (a tie)
            clean.copy()]                      # null: no change, Δρ = 0
    arrays = {"set": np.array(["circuit"] * 4), "draw": np.array([-1, 0, 1, 2]), "size": np.array([2, 2, 2, 2]),
              "features": np.array([[3, 7], [1, 2], [4, 5], [6, 8]]), "scores": np.stack(rows), "clean": clean,
              "mutant": np.array(["A1C", "A2C", "A3C", "A4C", "A5C"]), "dms": dms, "protein": np.array("P"),
              "layer": np.array(2), "k": np.array(4), "d_sae": np.array(16), "activations": np.array("interprot"),
              "n_null": np.array(3), "positions": np.array("every")}
    out = ablation_rows(arrays)
    assert list(out.columns) == TABLES["set_ablation"] and len(out) == 1
    row = out.iloc[0]
    assert (row["features"], row["size"], row["n_dms"]) == ("3;7", 2, 5)
    assert row["delta_rho"] == pytest.approx(-2.0)
    assert row["p_delta_rho"] == pytest.approx(2 / 4)        # (1 + #{−2}) / (1 + 3): the tie counts
    assert row["null_delta_rho_mean"] == pytest.approx((-0.1 - 2.0 + 0.0) / 3)
    assert row["p_rho_clean_ablated"] == pytest.approx(2 / 4)
    assert row["null_mean_abs_delta_mean"] == pytest.approx((0.4 + 2.4 + 0.0) / 3)  # |Δ| means: 2/5, 12/5, 0


def test_a_set_too_large_for_its_deciles_is_reported_without_a_null(caplog):
    """A two-feature set that fills its decile has nothing of it left to draw, so it gets
    no null (and a warning) while a one-feature set of the same job still gets its nulls; its table row has
    n_null 0 and NaN null columns and p."""
    from types import SimpleNamespace

    from esmsae.analyses.ablation import prepared
    from esmsae.tables.ablation import ablation_rows

    circuits = pd.DataFrame({"protein": ["P"], "layer": [2], "negligible": [False], "features": ["3;7"]})
    universal = pd.DataFrame({"feature": [4], "label": [""], "layer": [2], "proteins": ["P;Q"]})
    labels = pd.DataFrame({"layer": [2] * 20, "feature": range(20), "identity": [False] * 20,
                           "frequency": [100.0 if j in (3, 7) else float(j) for j in range(20)]})
    # deciles of two by rank: the top one is {3, 7}, the circuit set itself, so nothing is left to draw
    settings = AblationSettings(sets=("circuit", "universal"), top_n=None, n_null=3, positions="every", seed=0)
    raw = {"settings": settings, "circuits": circuits, "universal": universal, "labels": labels,
           "ig": ig_result(np.zeros((1, 20))), "inputs": {"labels": "feature_labels.csv"}, "mutants": [],
           "positions": np.zeros(0, int), "wt": np.zeros(0, int), "mut": np.zeros(0, int), "dms": np.zeros(0)}
    view = SimpleNamespace(protein="P", layer=2, engine=SimpleNamespace(sae=SimpleNamespace(
        info=SimpleNamespace(d_sae=20))))
    assert (frequency_deciles(labels["frequency"].to_numpy()) == 9).nonzero()[0].tolist() == [3, 7]
    with caplog.at_level("WARNING"):
        ctx = prepared(view, raw)
    assert ctx.sets == {"circuit": [3, 7], "universal": [4]}
    assert ctx.nulls["circuit"] == [] and "no frequency-matched null" in caplog.text
    assert len(ctx.nulls["universal"]) == 3

    clean = np.array([0.0, 1.0, 2.0, 3.0])

    dms = np.array([0.0, 1.0, 3.0, 2.0])
    arrays = {"set": np.array(["circuit"]), "draw": np.array([-1]), "size": np.array([2]),
              "features": np.array([[3, 7]]), "scores": np.array([[0.0, 1.0, 3.0, 2.0]]), "clean": clean,
              "dms": dms, "protein": np.array("P"), "layer": np.array(2), "k": np.array(2), "d_sae": np.array(10),
              "activations": np.array("interprot"), "n_null": np.array(100), "positions": np.array("every")}
    row = ablation_rows(arrays).iloc[0]
    assert row["n_null"] == 0 and np.isnan(row["p_delta_rho"]) and np.isnan(row["null_delta_rho_mean"])
    assert row["rho_a"] == pytest.approx(1.0) and row["rho_0"] == pytest.approx(0.8)  # hand: ρ(clean, dms) = 0.8


# -- mutation-testing round (mutation/findings.md): the table's arithmetic at its bars ------------------------------
def test_empirical_p_and_spread_are_undefined_with_a_nan_null():
    """A null holding a NaN (a constant null row has no ρ) gives p NaN, not a count over the rest; no values: NaN."""
    assert np.isnan(empirical_p(0.1, np.array([0.0, np.nan])))
    assert np.isnan(empirical_p(float("inf"), np.array([0.0])))
    assert empirical_p(0.5, np.array([0.5])) == 1.0   # (1 + 1) / (1 + 1): the tie counts
    assert all(np.isnan(spread(np.array([]))))
    assert spread(np.array([2.0])) == (2.0, 2.0, 2.0)
    # a missing value given as None (an object array) is NaN too, not an error
    assert np.isnan(empirical_p(0.1, [0.0, None])) and all(np.isnan(spread([1.0, None])))


def test_row_statistics_read_dms_only_where_present_and_need_three():
    """clean 1..5, ablated 2, 3, 1, 5, 4. DMS at singles 2..4 only (1, 2, 3): ρ_0 = ρ((2, 3, 4), DMS) = 1;
    ρ_A = ρ((3, 1, 5), DMS): ranks 2, 1, 3, Σd² = 2, 1 − 6·2/(3·8) = 0.5; Δρ = −0.5. ρ(clean, ablated) over all
    five: Σd² = 1 + 1 + 4 + 1 + 1 = 8, 1 − 48/120 = 0.6; mean |Δ| = 6/5. With DMS at two singles only: no DMS ρ."""
    clean, ablated = np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 3, 1, 5, 4])
    three = row_statistics(ablated, clean, np.array([np.nan, 1.0, 2.0, 3.0, np.nan]))
    assert three["rho_0"] == pytest.approx(1.0) and three["rho_a"] == pytest.approx(0.5)
    assert three["delta_rho"] == pytest.approx(-0.5) and three["rho_clean_ablated"] == pytest.approx(0.6)
    assert three["mean_abs_delta"] == pytest.approx(1.2)
    two = row_statistics(ablated, clean, np.array([np.nan, 1.0, 2.0, np.nan, np.nan]))
    assert np.isnan(two["rho_0"]) and np.isnan(two["rho_a"]) and np.isnan(two["delta_rho"])
    assert two["rho_clean_ablated"] == pytest.approx(0.6) and two["mean_abs_delta"] == pytest.approx(1.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no singles: NaN, not the mean of an empty array
        empty = row_statistics(np.zeros(0), np.zeros(0), np.zeros(0))
    assert all(np.isnan(v) for v in empty.values())


def ablation_arrays(sets: list[tuple[str, list[int], list[np.ndarray]]], clean: np.ndarray, dms: np.ndarray,
                    protein: str = "P", layer: int = 2, width: int = 3) -> dict:
    """A job's arrays: per set (name, features, [its scores, then each null's]), features padded with −1."""
    names, draws, sizes, features, scores = [], [], [], [], []
    for name, members, rows in sets:
        for draw, row in enumerate(rows, start=-1):
            names.append(name)
            draws.append(draw)
            sizes.append(len(members))
            features.append(members + [-1] * (width - len(members)))
            scores.append(row)
    return {"set": np.array(names), "draw": np.array(draws), "size": np.array(sizes), "features": np.array(features),
            "scores": np.stack(scores), "clean": clean,
            "mutant": np.array([f"A{i}C" for i in range(1, len(clean) + 1)]),
            "dms": dms, "protein": np.array(protein), "layer": np.array(layer), "k": np.array(4),
            "d_sae": np.array(16), "activations": np.array("interprot"), "n_null": np.array(100),
            "positions": np.array("site"), "seed": np.array(0)}


def test_ablation_rows_of_two_sets_with_every_null_column_by_hand():
    """clean = DMS = 1..5 (ρ_0 = 1). "top" (first in the file, so first in the table), features 0, 2: scores
    1, 2, 3, 5, 4 (ρ_A = ρ(clean, ablated) = 1 − 6·2/120 = 0.9, Δρ −0.1, |Δ| 2/5). Its nulls: reversed (ρ −1,
    Δρ −2, |Δ| 12/5) and unchanged (ρ 1, Δρ 0, |Δ| 0). Two nulls [a, b]: mean (a + b)/2, p05 a + 0.05(b − a),
    p95 a + 0.95(b − a): Δρ −1, −1.9, −0.1; ρ(clean, ablated) 0, −0.9, 0.9; |Δ| 1.2, 0.12, 2.28. p = (1 + 1)/3
    both ways. "circuit", feature 5 (padding −1 dropped): 2, 1, 3, 4, 5 (Δρ −0.1); nulls: the same scores (a
    tie, counted) and 3, 2, 1, 4, 5 (Σd² = 8: ρ 0.6, Δρ −0.4): p = (1 + 2)/3 = 1 for Δρ; ρ(clean, ablated)
    0.9 vs 0.9, 0.6: 1 as well. n_null counts the file's null rows (2), not its setting (100)."""
    clean = np.array([1.0, 2, 3, 4, 5])
    top = [np.array([1.0, 2, 3, 5, 4]), clean[::-1].copy(), clean.copy()]
    circuit = [np.array([2.0, 1, 3, 4, 5]), np.array([2.0, 1, 3, 4, 5]), np.array([3.0, 2, 1, 4, 5])]
    out = ablation_rows(ablation_arrays([("top", [0, 2], top), ("circuit", [5], circuit)], clean, clean.copy(),
                                        protein="Q", layer=6))
    assert out["set"].tolist() == ["top", "circuit"] and list(out.columns) == TABLES["set_ablation"]
    t, c = out.iloc[0], out.iloc[1]
    assert (t["protein"], t["layer"], t["features"], t["size"], t["n_scored"], t["n_dms"]) == ("Q", 6, "0;2", 2, 5, 5)
    assert (c["features"], c["size"]) == ("5", 1)
    for name, value in [("rho_0", 1.0), ("rho_a", 0.9), ("delta_rho", -0.1), ("rho_clean_ablated", 0.9),
                        ("mean_abs_delta", 0.4), ("null_delta_rho_mean", -1.0), ("null_delta_rho_p05", -1.9),
                        ("null_delta_rho_p95", -0.1), ("null_rho_clean_ablated_mean", 0.0),
                        ("null_rho_clean_ablated_p05", -0.9), ("null_rho_clean_ablated_p95", 0.9),
                        ("null_mean_abs_delta_mean", 1.2), ("null_mean_abs_delta_p05", 0.12),
                        ("null_mean_abs_delta_p95", 2.28), ("p_delta_rho", 2 / 3), ("p_rho_clean_ablated", 2 / 3)]:
        assert t[name] == pytest.approx(value, abs=1e-12), name
    assert c["delta_rho"] == pytest.approx(-0.1) and c["p_delta_rho"] == 1.0 and c["p_rho_clean_ablated"] == 1.0
    assert c["null_delta_rho_mean"] == pytest.approx(-0.25)
    assert (t["k"], t["d_sae"], t["activations"], t["n_null"], t["positions"]) == (4, 16, "interprot", 2, "site")


def test_tabulate_set_ablation_orders_by_protein_as_given_then_layer_and_keeps_each_files_sets(tmp_path):
    """Files given as Q L4, P L2, Q L2, P L4: the table is Q's layers 2, 4 then P's 2, 4 (proteins in the
    order given, layers ascending), each file's sets in its own order (top, circuit), told apart by their
    features (the layer, and the layer + 1). clean = DMS = 1..5; top swaps the last two singles, circuit the
    first two: Δρ = 0.9 − 1 = −0.1 for both. One null each: unchanged (Δρ 0) and reversed (Δρ −2), so
    p = (1 + 0)/2 for top and (1 + 1)/2 for circuit."""
    from esmsae.pipeline.columns import read_table
    from esmsae.tables.ablation import tabulate_set_ablation

    clean = np.array([1.0, 2, 3, 4, 5])
    paths = {}
    for protein, layer in [("Q", 4), ("P", 2), ("Q", 2), ("P", 4)]:
        arrays = ablation_arrays([("top", [layer], [np.array([1.0, 2, 3, 5, 4]), clean.copy()]),
                                  ("circuit", [layer + 1], [np.array([2.0, 1, 3, 4, 5]), clean[::-1].copy()])],
                                 clean, clean.copy(), protein=protein, layer=layer)
        path = tmp_path / f"{protein}_L{layer}.npz"
        np.savez(path, **arrays)
        paths[(protein, layer)] = path
    out = tmp_path / "set_ablation.csv"
    tabulate_set_ablation(paths, out)
    table = read_table(out, "set_ablation")
    assert list(table.columns) == TABLES["set_ablation"]
    assert table[["protein", "layer", "set", "features"]].values.tolist() == [
        ["Q", 2, "top", "2"], ["Q", 2, "circuit", "3"], ["Q", 4, "top", "4"], ["Q", 4, "circuit", "5"],
        ["P", 2, "top", "2"], ["P", 2, "circuit", "3"], ["P", 4, "top", "4"], ["P", 4, "circuit", "5"]]
    np.testing.assert_allclose(table["delta_rho"], -0.1)
    np.testing.assert_allclose(table["p_delta_rho"], [1 / 2, 1.0] * 4)
    tabulate_set_ablation({}, out)
    empty = read_table(out, "set_ablation")
    assert empty.empty and list(empty.columns) == TABLES["set_ablation"]
