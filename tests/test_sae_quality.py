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
