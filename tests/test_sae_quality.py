"""SAE fidelity (METHOD.md "SAE fidelity"): definitions on hand-made numbers, a perfect SAE, a forward mismatch
and a wrong k that the tables must show, and the task-fidelity table by hand."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.sae_quality import (
    WRONG_K_ERROR_RATIO,
    evaluated_ks,
    kl_20,
    layer_fidelity,
    loss_recovered,
    masked,
    measure_sae_quality,
    spliced,
    task_scores,
    wrong_k,
)
from esmsae.analyses.scoring import scores_table, wt_log_probs, wt_marginal
from esmsae.config.settings import Forward, Runtime
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.activations import residue_activations
from esmsae.model.sae import TopKSAE, save_sae
from esmsae.model.training import train_sae, training_sequences
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.io import write_csv
from esmsae.tables.sae_quality import quality_table, task_fidelity

from .conftest import DEFAULTS, FORWARDS, WT

SEQ = WT["PR40A_HUMAN"]
RUNTIME = Runtime(device="cpu", batch_size=None, trust_pickle=False)


# -- definitions on hand-made numbers -----------------------------------------------------------------------------
def test_loss_recovered_by_hand():
    assert loss_recovered(2.0, 3.0, 4.0) == 0.5      # half-way from zeroing to clean
    assert loss_recovered(2.0, 2.0, 4.0) == 1.0      # loses nothing
    assert loss_recovered(2.0, 4.0, 4.0) == 0.0      # as bad as zeroing
    assert loss_recovered(2.0, 5.0, 4.0) == -0.5     # worse than zeroing: negative, not clipped
    assert math.isnan(loss_recovered(3.0, 3.5, 3.0))  # no span between clean and zero


def test_kl_over_the_20_amino_acids_by_hand():
    """Clean logits all 0 (p = 1/20 each); reconstructed: log 2 on one amino acid (q = 2/21 there, 1/21 else).
    KL(p‖q) = (1/20)·[log((1/20)/(2/21)) + 19·log((1/20)/(1/21))]. Other tokens' logits do not count."""
    vocab, aa_ids = 33, torch.arange(4, 24)
    clean = torch.zeros(vocab, dtype=torch.float64)
    recon = torch.zeros(vocab, dtype=torch.float64)
    recon[aa_ids[3]] = math.log(2)
    recon[0] = recon[30] = 50.0  # special tokens: outside the 20
    expected = (math.log((1 / 20) / (2 / 21)) + 19 * math.log((1 / 20) / (1 / 21))) / 20
    assert float(kl_20(clean, recon, aa_ids)) == pytest.approx(expected, rel=1e-12)
    assert float(kl_20(recon, recon, aa_ids)) == 0.0
    assert float(kl_20(clean, recon, aa_ids)) != pytest.approx(float(kl_20(recon, clean, aa_ids)), rel=1e-3)


def test_wrong_k_sits_at_half_the_unexplained_variance():
    """Flagged when the other k's 1 − FVE is below WRONG_K_ERROR_RATIO (1/2) of the configured k's — strictly."""
    assert WRONG_K_ERROR_RATIO == 0.5
    assert wrong_k({"half_k": 0.2, "k": 0.5, "double_k": 0.75}) is None      # 0.25 is not < 0.5·0.5 (on the bar)
    assert wrong_k({"half_k": 0.2, "k": 0.5, "double_k": 0.7500001}) == "double_k"
    assert wrong_k({"half_k": 0.875 + 1e-9, "k": 0.75, "double_k": 0.7}) == "half_k"
    assert wrong_k({"half_k": 0.9375, "k": 0.875, "double_k": 0.9375}) is None  # 0.0625 = 0.125/2: on the bar


def test_wrong_k_on_the_bar_is_not_flagged_for_half_k():
    # 1 − 0.875 = 0.125 and 0.5·(1 − 0.75) = 0.125: exactly on the bar, not below it.
    assert wrong_k({"half_k": 0.875, "k": 0.75, "double_k": 0.7}) is None


def test_evaluated_ks_stay_inside_the_sae():
    assert evaluated_ks(16, 256) == {"half_k": 8, "k": 16, "double_k": 32}
    assert evaluated_ks(1, 256) == {"half_k": 1, "k": 1, "double_k": 2}
    assert evaluated_ks(100, 150) == {"half_k": 50, "k": 100, "double_k": 149}  # TopK needs k < d_sae


def test_masking_is_fifteen_percent_of_the_residues_with_a_fixed_seed(lm):
    tokens = lm.tokenize([SEQ, SEQ[::-1]])
    out, where = masked(lm, tokens, seed=3)
    length = len(SEQ)
    assert where.sum(1).tolist() == [round(0.15 * length)] * 2
    assert not where[:, 0].any() and not where[:, -1].any()  # never BOS or EOS
    assert bool((out[where] == lm.alphabet.mask_idx).all()) and torch.equal(out[~where], tokens[~where])
    again, where_again = masked(lm, tokens, seed=3)
    assert torch.equal(again, out) and torch.equal(where_again, where)
    assert not torch.equal(masked(lm, tokens, seed=4)[1], where)


def test_splicing_touches_residues_only(lm, saes):
    h = lm.hidden(lm.tokenize([SEQ]), 2)
    recon, zero = spliced(lm, saes[2], 2, h, "recon"), spliced(lm, saes[2], 2, h, "zero")
    for out in (recon, zero):
        assert torch.equal(out[:, [0, -1]], h[:, [0, -1]])
    assert bool((zero[:, 1:-1] == 0).all())
    _, z, mu, sigma = saes[2].encode(h[:, 1:-1])
    assert torch.equal(recon[:, 1:-1], saes[2].decode(z, mu, sigma))


# -- a perfect SAE: nothing is lost -------------------------------------------------------------------------------
def perfect_sae(d: int) -> TopKSAE:
    """w_enc = [I, −I], w_dec = [I; −I], k = d: z = [relu(x̂), relu(−x̂)], so z·w_dec = x̂ and dec(z) = x̂σ + μ,
    which is x up to the SAE's 1e-5 in σ + 1e-5."""
    eye = torch.eye(d)
    return TopKSAE(torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), torch.zeros(2 * d), torch.zeros(d), k=d)


@pytest.mark.parametrize("forward", FORWARDS)
def test_a_perfect_sae_loses_nothing_on_either_forward(lms, forward):
    lm = lms[forward]
    sae = perfect_sae(lm.embed_dim)
    row = layer_fidelity(lm, sae, 2, [SEQ, WT["EPHB2_HUMAN"]])
    assert row["fve"] == pytest.approx(1.0, abs=1e-6) and row["kl"] == pytest.approx(0.0, abs=1e-8)
    assert row["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert row["mean_l0"] <= lm.embed_dim and row["activations"] == forward
    assert row["n_positions"] == len(SEQ) + len(WT["EPHB2_HUMAN"])
    assert row["n_masked"] == round(0.15 * len(SEQ)) + round(0.15 * len(WT["EPHB2_HUMAN"]))
    scores = scores_table(lm, "PR40A_HUMAN", SEQ, None, DEFAULTS.proteins["P"].selection)
    out = task_scores(lm, sae, 2, "PR40A_HUMAN", SEQ, scores)
    assert list(out.columns) == TABLES["sae_scores"] and len(out) == 19 * len(SEQ)
    np.testing.assert_allclose(out["recon"], out["clean"], atol=1e-4)
    # the clean column is this forward's own WT-marginal score
    mutants = [parse_mutant(name, SEQ) for name in out["mutant"][:30]]
    np.testing.assert_allclose(out["clean"][:30], wt_marginal(lm, wt_log_probs(lm, SEQ), mutants), atol=1e-5)


# -- a mismatch and a wrong k must show ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(lms):
    """SAEs trained at layer 2 on each forward's activations, at k = 8 (d_sae 96)."""
    seqs = training_sequences(list(WT.values()), 40, 0)
    return {forward: train_sae(residue_activations(lm, seqs, [2])[2], d_sae=96, k=8, steps=300, lr=0.003,
                               batch_size=512, seed=0, layer=2)
            for forward, lm in lms.items()}


def test_an_sae_read_on_the_forward_it_was_not_trained_on_shows_lower_fve_and_higher_kl(lms, trained):
    """The mismatch is detectable: on held-out sequences each SAE reconstructs its own forward better.
    (Loss recovered is not asserted: a random model's masked-LM CE barely depends on its input — CE_zero −
    CE_clean is about 0.06 nats at this layer, of either sign across layers — so the ratio is noise.)"""
    held_out = training_sequences(list(WT.values()), 4, 9)
    rows = {(trained_on, read_on): layer_fidelity(lms[read_on], sae, 2, held_out)
            for trained_on, sae in trained.items() for read_on in FORWARDS}
    for own, other in (("interprot", "fair-esm"), ("fair-esm", "interprot")):
        assert rows[(own, own)]["fve"] > rows[(own, other)]["fve"]
        assert rows[(own, own)]["kl"] < rows[(own, other)]["kl"]


def write_inputs(tmp_path, lm, sae):
    sae_path = tmp_path / "sae_l2.safetensors"
    save_sae(sae, sae_path)
    scores = {}
    for protein in ("PR40A_HUMAN", "EPHB2_HUMAN"):
        scores[protein] = tmp_path / f"{protein}.csv"
        table = scores_table(lm, protein, WT[protein], None, DEFAULTS.proteins["P"].selection)
        write_csv(table, scores[protein])
    return sae_path, scores


@pytest.mark.parametrize(("configured", "flag"), [(8, ""), (4, "double_k")])
def test_an_sae_run_at_the_wrong_k_is_flagged_naming_its_file(tmp_path, tiny_dir, lms, trained, configured, flag,
                                                               caplog):
    """Trained at k = 8: configured 8, nothing; configured 4 (half), its FVE at 2k = 8 is far better: flagged,
    and the warning names the file. Both forwards' rows are written, the study's first."""
    lm = lms["interprot"]
    sae_path, scores = write_inputs(tmp_path, lm, trained["interprot"])
    out = {"quality": tmp_path / "L2.csv", "scores": tmp_path / "L2_scores.csv"}
    with caplog.at_level(logging.WARNING):
        measure_sae_quality({p: WT[p] for p in scores}, 2, configured, Forward("fp32", "interprot"), RUNTIME,
                            tiny_dir / "esm2_tiny.pt", sae_path, scores, out)
    table = read_table(out["quality"], "sae_fidelity")
    assert table["activations"].tolist() == ["interprot", "fair-esm"]
    assert table["study_forward"].tolist() == [True, False]
    assert table["wrong_k"].fillna("").iloc[0] == flag
    assert (str(sae_path) in caplog.text) == bool(flag)
    assert table["sae_bytes"].iloc[0] == sae_path.stat().st_size and len(table["sae_sha256"].iloc[0]) == 64
    assert (table["k"] == configured).all() and (table["half_k"] == configured // 2).all()
    task = read_table(out["scores"], "sae_scores")
    assert set(task["activations"]) == set(FORWARDS) and set(task["protein"]) == set(scores)


# -- the task-fidelity table, by hand -------------------------------------------------------------------------------
def scores_frame(clean, recon, dms, activations="interprot", protein="P", layer=2):
    return pd.DataFrame({"protein": protein, "mutant": [f"A{i}C" for i in range(1, len(clean) + 1)],
                         "activations": activations, "clean": clean, "recon": recon, "dms_score": dms,
                         "layer": layer, "k": 4, "d_sae": 16})


def test_task_fidelity_by_hand():
    """clean = 1..5, recon swaps the 3rd and 4th, DMS decreasing with the 5th row without DMS:
    ρ(clean, DMS) = −1 over the 4 with DMS; ρ(recon, DMS) over them: recon ranks 1 2 4 3 against DMS ranks
    4 3 2 1, Σd² = 18, 1 − 6·18/(4·15) = −0.8; ρ(clean, recon) over all 5: Σd² = 2, 1 − 6·2/(5·24) = 0.9."""
    frame = scores_frame([1.0, 2, 3, 4, 5], [1.0, 2, 4, 3, 5], [4.0, 3, 2, 1, np.nan])
    out = task_fidelity(frame, "interprot")
    assert list(out.columns) == TABLES["sae_task_fidelity"] and len(out) == 1
    row = out.iloc[0]
    assert (row["n"], row["n_dms"]) == (5, 4) and bool(row["study_forward"])
    assert row["spearman_dms_clean"] == pytest.approx(-1.0)
    assert row["spearman_dms_recon"] == pytest.approx(-0.8)
    assert row["spearman_clean_recon"] == pytest.approx(0.9)


def test_quality_table_averages_proteins_per_layer_and_forward():
    task = pd.concat([task_fidelity(scores_frame([1.0, 2, 3], [1.0, 2, 3], [np.nan] * 3, protein=p, activations=a),
                                    "interprot")
                      for p in ("P", "Q") for a in FORWARDS], ignore_index=True)
    task.loc[(task["protein"] == "Q") & (task["activations"] == "fair-esm"), "spearman_clean_recon"] = 0.5
    fidelity = pd.DataFrame([{c: 0 for c in TABLES["sae_fidelity"]} | {"layer": 2, "activations": a,
                                                                       "study_forward": a == "interprot",
                                                                       "wrong_k": ""} for a in FORWARDS])
    out = quality_table(fidelity, task)
    assert out["activations"].tolist() == ["interprot", "fair-esm"]  # the study's forward first
    assert out["spearman_clean_recon_mean"].tolist() == [1.0, 0.75]
    assert out["n_proteins"].tolist() == [2, 2]
    assert out["spearman_dms_clean_mean"].isna().all()  # no DMS: NaN, not 0


# -- mutation-testing round (mutation/findings.md) ------------------------------------------------------------------
def test_task_fidelity_per_protein_layer_and_forward_in_order_of_appearance():
    """Rows by (protein, layer, forward) in the order they appear, the study forward fair-esm here. P on
    interprot: clean 1..4, recon 1, 2, 4, 3, DMS 1..4: ρ(clean, DMS) 1, ρ(recon, DMS) = 1 − 6·2/60 = 0.8 = ρ(clean,
    recon). P on fair-esm: recon = clean, DMS the same: 1, 1, 1. Q (layer 4, k 8, d_sae 32): DMS at two singles
    only: no DMS ρ (n_dms 2); ρ(clean, recon) over all 4: recon reversed, −1."""
    frame = pd.concat([scores_frame([1.0, 2, 3, 4], [1.0, 2, 4, 3], [1.0, 2, 3, 4]),
                       scores_frame([1.0, 2, 3, 4], [1.0, 2, 3, 4], [1.0, 2, 3, 4], activations="fair-esm"),
                       scores_frame([1.0, 2, 3, 4], [4.0, 3, 2, 1], [np.nan, 1.0, np.nan, 2.0], protein="Q",
                                    layer=4).assign(k=8, d_sae=32)], ignore_index=True)
    out = task_fidelity(frame, "fair-esm")
    assert out[["protein", "layer", "activations", "study_forward", "n", "n_dms", "k", "d_sae"]].values.tolist() == [
        ["P", 2, "interprot", False, 4, 4, 4, 16], ["P", 2, "fair-esm", True, 4, 4, 4, 16],
        ["Q", 4, "interprot", False, 4, 2, 8, 32]]
    np.testing.assert_allclose(out["spearman_dms_clean"], [1.0, 1.0, np.nan])
    np.testing.assert_allclose(out["spearman_dms_recon"], [0.8, 1.0, np.nan])
    np.testing.assert_allclose(out["spearman_clean_recon"], [0.8, 1.0, -1.0])


def fidelity_rows(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{c: 0 for c in TABLES["sae_fidelity"]} | {"wrong_k": "", "sae_file": "s.pt"} | r
                         for r in rows], columns=TABLES["sae_fidelity"])


def task_rows(rows: list[tuple]) -> pd.DataFrame:
    """Task-fidelity rows from (protein, layer, forward, ρ(clean, recon), ρ(DMS, clean), ρ(DMS, recon))."""
    return pd.DataFrame([{"protein": p, "layer": layer, "activations": a, "study_forward": a == "interprot", "n": 5,
                          "n_dms": 5, "spearman_dms_clean": dc, "spearman_dms_recon": dr, "spearman_clean_recon": cr,
                          "k": 4, "d_sae": 16} for p, layer, a, cr, dc, dr in rows],
                        columns=TABLES["sae_task_fidelity"])


def test_quality_table_sorts_by_layer_study_forward_first_and_leaves_layers_without_scores_empty():
    """Fidelity given as layer 4 (interprot, fair-esm) then layer 2 (fair-esm, interprot): the table is layer 2
    then 4, the study's forward (interprot) first in each. Layer 2's proteins P and Q: interprot ρ(clean, recon)
    (1 + 0.5)/2 = 0.75, ρ(DMS, clean) (−1 + 0.5)/2 = −0.25, ρ(DMS, recon) (0 + 0.5)/2 = 0.25; fair-esm from P
    alone: 0.25, 1, 0.5 and 1 protein. Layer 4 has no task rows: n_proteins 0, means NaN."""
    fidelity = fidelity_rows([{"layer": 4, "activations": "interprot", "study_forward": True, "fve": 0.4},
                              {"layer": 4, "activations": "fair-esm", "study_forward": False, "fve": 0.3},
                              {"layer": 2, "activations": "fair-esm", "study_forward": False, "fve": 0.2},
                              {"layer": 2, "activations": "interprot", "study_forward": True, "fve": 0.1}])
    task = task_rows([("P", 2, "interprot", 1.0, -1.0, 0.0), ("P", 2, "fair-esm", 0.25, 1.0, 0.5),
                      ("Q", 2, "interprot", 0.5, 0.5, 0.5)])
    out = quality_table(fidelity, task)
    assert list(out.columns) == TABLES["sae_quality"] and out.index.tolist() == [0, 1, 2, 3]
    assert out[["layer", "activations", "fve", "n_proteins"]].values.tolist() == [
        [2, "interprot", 0.1, 2], [2, "fair-esm", 0.2, 1], [4, "interprot", 0.4, 0], [4, "fair-esm", 0.3, 0]]
    assert out["n_proteins"].dtype == np.int64
    np.testing.assert_allclose(out["spearman_clean_recon_mean"], [0.75, 0.25, np.nan, np.nan])
    np.testing.assert_allclose(out["spearman_dms_clean_mean"], [-0.25, 1.0, np.nan, np.nan])
    np.testing.assert_allclose(out["spearman_dms_recon_mean"], [0.25, 0.5, np.nan, np.nan])


def test_tabulate_sae_quality_reads_the_study_forward_from_the_fidelity_files(tmp_path):
    """Layer files given 4 then 2; the study forward is the one the fidelity rows mark (fair-esm): the task
    table's study_forward follows it, its rows come in layer order (2, then 4), and the quality table has
    each layer's study row first with its proteins' mean ρ(clean, recon): layer 2 fair-esm 1 (recon = clean),
    interprot 0.8 (recon 1, 2, 4, 3)."""
    from esmsae.tables.sae_quality import tabulate_sae_quality

    quality, scores = {}, {}
    for layer in (4, 2):
        quality[layer] = tmp_path / f"L{layer}.csv"
        write_csv(fidelity_rows([{"layer": layer, "activations": "interprot", "study_forward": False},
                                 {"layer": layer, "activations": "fair-esm", "study_forward": True}]), quality[layer])
        scores[layer] = tmp_path / f"L{layer}_scores.csv"
        write_csv(pd.concat([scores_frame([1.0, 2, 3, 4], [1.0, 2, 4, 3], [1.0, 2, 3, 4], layer=layer),
                             scores_frame([1.0, 2, 3, 4], [1.0, 2, 3, 4], [1.0, 2, 3, 4], activations="fair-esm",
                                          layer=layer)]), scores[layer])
    out = {"table": tmp_path / "sae_quality.csv", "task": tmp_path / "sae_task_fidelity.csv"}
    tabulate_sae_quality(quality, scores, out)
    task = read_table(out["task"], "sae_task_fidelity")
    assert task[["layer", "activations", "study_forward"]].values.tolist() == [
        [2, "interprot", False], [2, "fair-esm", True], [4, "interprot", False], [4, "fair-esm", True]]
    table = read_table(out["table"], "sae_quality")
    assert table[["layer", "activations", "n_proteins"]].values.tolist() == [
        [2, "fair-esm", 1], [2, "interprot", 1], [4, "fair-esm", 1], [4, "interprot", 1]]
    np.testing.assert_allclose(table["spearman_clean_recon_mean"], [1.0, 0.8, 1.0, 0.8])


def test_task_fidelity_of_a_protein_with_one_single_and_of_no_scores():
    """One scored single: n 1, no ρ at all (below 3 points), its k and d_sae read from its row. No scores: an
    empty table that still has the columns."""
    one = task_fidelity(scores_frame([1.0], [2.0], [0.5]).assign(k=8, d_sae=32), "interprot")
    assert one[["protein", "layer", "n", "n_dms", "k", "d_sae"]].values.tolist() == [["P", 2, 1, 1, 8, 32]]
    assert one[["spearman_dms_clean", "spearman_dms_recon", "spearman_clean_recon"]].isna().all(axis=None)
    empty = task_fidelity(scores_frame([], [], []), "interprot")
    assert empty.empty and list(empty.columns) == TABLES["sae_task_fidelity"]


def test_tabulate_sae_quality_of_one_layer_warns_once_naming_the_file_of_a_wrong_k(tmp_path, caplog):
    """One layer: the study forward (interprot) is its one marked row. Its fair-esm row is flagged double_k:
    one warning naming the file, the layer, the forward, the flag and k; the unflagged row gives none."""
    from esmsae.tables.sae_quality import tabulate_sae_quality

    quality, scores = {2: tmp_path / "L2.csv"}, {2: tmp_path / "L2_scores.csv"}
    write_csv(fidelity_rows([{"layer": 2, "activations": "interprot", "study_forward": True, "k": 4},
                             {"layer": 2, "activations": "fair-esm", "study_forward": False, "k": 4,
                              "wrong_k": "double_k", "sae_file": "l2.safetensors"}]), quality[2])
    write_csv(pd.concat([scores_frame([1.0, 2, 3, 4], [1.0, 2, 4, 3], [1.0, 2, 3, 4]),
                         scores_frame([1.0, 2, 3, 4], [1.0, 2, 3, 4], [1.0, 2, 3, 4], activations="fair-esm")]),
              scores[2])
    out = {"table": tmp_path / "sae_quality.csv", "task": tmp_path / "sae_task_fidelity.csv"}
    with caplog.at_level(logging.WARNING, logger="esmsae.tables.sae_quality"):
        tabulate_sae_quality(quality, scores, out)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["l2.safetensors (layer 2, fair-esm forward): FVE is far higher at double_k than at k = 4"]
    task = read_table(out["task"], "sae_task_fidelity")
    assert task[["activations", "study_forward"]].values.tolist() == [["interprot", True], ["fair-esm", False]]
    table = read_table(out["table"], "sae_quality")
    assert table["activations"].tolist() == ["interprot", "fair-esm"]
    np.testing.assert_allclose(table["spearman_clean_recon_mean"], [0.8, 1.0])
