"""Feature labels: residue statistics by hand, labels, a planted identity feature, output effects, identity share."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses import feature_activity as feature_activity_module
from esmsae.analyses.arrays import Activity
from esmsae.analyses.feature_activity import characterize_features, feature_activity
from esmsae.analyses.output_effects import effect_positions, output_effects
from esmsae.config.parse import load
from esmsae.config.settings import Runtime
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.model.sae import TopKSAE, save_sae
from esmsae.model.splice import Splice
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.errors import InputError
from esmsae.tables.identity_share import identity_share
from esmsae.tables.labels import enriched, feature_table, group_f1, label, label_features, residue_scores, top_residues
from esmsae.tables.shown_features import shown_features

from .conftest import DEFAULTS, FAIR_ESM, LAYERS, WT, splice_every_layer
from .reference import hooked_logits

A = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
RUNTIME = Runtime(device="cpu", batch_size=None, trust_pickle=False)


def activity(active_by_residue, residue_counts, n_active=None, d_sae=None, **changes):
    """An Activity of hand-made counts (d_sae features over 20 residues)."""
    hits = np.asarray(active_by_residue, dtype=np.int64)
    d = hits.shape[0] if d_sae is None else d_sae
    values = dict(layer=2, k=4, d_sae=d, n_sequences=1, n_positions=int(np.sum(residue_counts)),
                  residue_counts=np.asarray(residue_counts, dtype=np.int64),
                  n_active=hits.sum(1) if n_active is None else np.asarray(n_active),
                  active_by_residue=hits, activation_by_residue=hits.astype(float),
                  max_activation=np.ones(d), wt_latents={})
    return Activity(**(values | changes))


def counts(**by_residue) -> np.ndarray:
    row = np.zeros(20, dtype=np.int64)
    for aa, n in by_residue.items():
        row[A[aa]] = n
    return row


def test_precision_recall_f1_by_hand():
    # A feature active at 4 positions, 3 of them L; the reference has 6 L and 10 K.
    hits = np.stack([counts(L=3, K=1), counts(), counts(K=10)])
    residues = counts(L=6, K=10)
    precision, recall, f1 = residue_scores(hits, hits.sum(1), residues)
    assert precision[0, A["L"]] == 0.75 and recall[0, A["L"]] == 0.5
    assert f1[0, A["L"]] == pytest.approx(2 * 0.75 * 0.5 / 1.25)  # 0.6
    assert precision[0, A["K"]] == 0.25 and recall[0, A["K"]] == 0.1
    assert f1[0, A["K"]] == pytest.approx(2 * 0.25 * 0.1 / 0.35)
    assert not f1[1].any() and not precision[1].any()  # never active: all 0, no division by zero
    assert f1[2, A["K"]] == 1.0 and f1[2, A["A"]] == 0.0  # a residue absent from the reference: 0


def test_top_residue_ties_go_alphabetical_and_identity_flag():
    # Feature 0: L and K tie (2 each of 4, reference 2 L and 2 K): F1 0.5 + ... → K (alphabetical) wins.
    hits = np.stack([counts(L=2, K=2), counts(W=5), counts(W=4, Y=1)])
    table = feature_table(activity(hits, counts(L=2, K=2, W=5, Y=5)), identity_f1=0.8)
    assert top_residues(residue_scores(hits, hits.sum(1), counts(L=2, K=2, W=5, Y=5))[2])[0] == A["K"]
    assert table["top_residue"].tolist() == ["K", "W", "W"]
    # Feature 1 fires on every W and nothing else: F1 1, an identity feature. Feature 2: P 0.8, R 0.8 → F1 0.8.
    assert table.loc[1, "f1"] == 1.0 and bool(table.loc[1, "identity"])
    assert table.loc[2, "f1"] == 0.8 and bool(table.loc[2, "identity"])  # exactly on the bar: it counts (>=)
    assert not feature_table(activity(hits, counts(L=2, K=2, W=5, Y=5)), identity_f1=0.81)["identity"][2]
    assert list(table.columns) == TABLES["feature_labels"]


def test_an_f1_tie_with_different_precision_and_recall_breaks_alphabetically():
    """E: 2 of 3 activations, 25 E in the reference; Y: 1 of 3, 11 Y. Both F1 = 1/7 exactly (2·hits/(n + n_a));
    2PR/(P+R) gives 0.14285714285714285 for E and 0.14285714285714288 for Y, which made Y win."""
    hits = counts(E=2, Y=1)[None, :]
    reference = counts(E=25, Y=11, A=100)
    _, _, f1 = residue_scores(hits, hits.sum(1), reference)
    assert f1[0, A["E"]] == f1[0, A["Y"]] == 1 / 7
    assert AMINO_ACIDS[top_residues(f1)[0]] == "E"
    assert feature_table(activity(hits, reference), identity_f1=0.8)["top_residue"][0] == "E"
    p_e, r_e, p_y, r_y = 2 / 3, 2 / 25, 1 / 3, 1 / 11
    assert 2 * p_e * r_e / (p_e + r_e) < 2 * p_y * r_y / (p_y + r_y)  # why the ratio form is needed


def test_label_text():
    assert label(0, 0, 0.0, False, [], 0.0) == "inactive on reference"
    assert label(10, A["L"], 1.0, True, [], 0.0, "L") == "L-identity; promotes L"
    assert label(10, A["K"], 0.3, False, [A["K"], A["R"]], 0.41) == "K/R-enriched (F1 0.41)"
    assert label(10, A["V"], 0.12, False, [], 0.0) == "broad (top V, F1 0.12)"
    # enriched: the fewest residues (at most 3) holding half the activations.
    assert enriched(np.array([0.3, 0.25, 0.2] + [0.25 / 17] * 17)) == [0, 1]
    assert enriched(np.array([0.6] + [0.4 / 19] * 19)) == [0]
    assert enriched(np.full(20, 0.05)) == []  # three residues hold 15 %: broad
    # K/R as one class: 6 of 10 activations at K or R, reference 8 K and 4 R: P 0.6, R 0.5, F1 6/11.
    hits = counts(K=4, R=2, A=4)
    assert group_f1(hits, 10, counts(K=8, R=4, A=100), [A["K"], A["R"]]) == pytest.approx(2 * 0.6 * 0.5 / 1.1)


def test_feature_table_labels_and_output_effects():
    hits = np.stack([counts(W=5), counts(K=3, R=3, A=4), counts()])
    effects = pd.DataFrame([{"layer": 2, "feature": 0, "n_positions": 3, **{aa: 0.0 for aa in AMINO_ACIDS},
                             "k": 4, "d_sae": 3}])
    effects.loc[0, "L"], effects.loc[0, "P"] = 0.5, -0.25
    table = feature_table(activity(hits, counts(W=5, K=20, R=20, A=20)), 0.8, effects)
    assert table.loc[0, "label"] == "W-identity; promotes L"
    assert (table.loc[0, "promotes"], table.loc[0, "promotes_effect"]) == ("L", 0.5)
    assert (table.loc[0, "suppresses"], table.loc[0, "suppresses_effect"]) == ("P", -0.25)
    assert table.loc[1, "label"].startswith("A/K-enriched (F1 ")  # A 0.4 + K 0.3 of its activations reach half
    assert pd.isna(table.loc[1, "promotes"]) and table.loc[2, "label"] == "inactive on reference"


def test_identity_share_by_hand():
    # |A| = [3, 1, 0, 2] over C = {0, 1, 3} (feature 2 never moved), A_err = 1: D = 7.
    # WT identity features {0}: 3/7; mutant identity features {1, 2}: 1/7 (2 is outside C).
    # Null: |Δ| = [1, 1, 0, 2]: WT 1/4, mutant 1/4.
    out = identity_share(np.array([3.0, -1.0, 5.0, 2.0]), -1.0, np.array([1.0, 1.0, 0.0, 2.0]),
                         np.array([True, False, False, False]), np.array([False, True, True, False]))
    assert out["wt_identity_share"] == pytest.approx(3 / 7) and out["mut_identity_share"] == pytest.approx(1 / 7)
    assert out["wt_identity_share_null"] == 0.25 and out["mut_identity_share_null"] == 0.25
    assert out["n_wt_identity_features"] == 1 and out["n_mut_identity_features"] == 1


def test_shown_features_and_card_priority():
    universal = pd.DataFrame({"feature": [7, 3], "layer": [4, 4], "proteins": ["P;Q;R", "P;Q"]})
    table = shown_features({4: {7: 5, 9: 2}}, {4: {11: 1}}, universal, {4: {9: 3, 12: 1}, 2: {1: 4}}, max_cards=3)
    assert list(table.columns) == TABLES["shown_features"]
    assert table[["layer", "feature"]].values.tolist() == [[2, 1], [4, 3], [4, 7], [4, 9], [4, 11], [4, 12]]
    # Universal first (3 proteins before 2), then circuit features by how many mutants: 7, 3, then L2 F1 (4).
    assert set(map(tuple, table.loc[table["card"], ["layer", "feature"]].values.tolist())) == {(4, 7), (4, 3), (2, 1)}


@pytest.mark.parametrize("layer", LAYERS)
def test_output_effect_equals_fair_esm_with_the_feature_removed(lm, saes, layer):
    """Δ_a = log p(a) − log p'(a) at a WT position, p' from a hooked fair-esm forward with the feature's
    contribution z_j w_dec_j σ taken out of h_ℓ there (all else, the error included, at WT)."""
    seq = WT["PR40A_HUMAN"]
    splice = splice_every_layer(lm, saes, seq)[layer]
    code = splice.wt_code(torch.arange(1, len(seq) + 1))
    feature = int(torch.nonzero((code.z > 0).any(0)).flatten()[0])
    total, count = output_effects(splice, [feature], max_positions=2)
    positions = effect_positions(code.z, feature, 2)
    assert count[0] == len(positions) >= 1
    logp = torch.log_softmax(hooked_logits(lm, seq, layer, {}), -1)
    expected = np.zeros(20)
    for position in positions:
        h = splice.h[0, position]
        z = code.z[position - 1]
        removed = h - z[feature] * splice.sae.w_dec[feature] * code.sigma[position - 1, 0]
        logp_removed = torch.log_softmax(hooked_logits(lm, seq, layer, {position: removed}), -1)
        expected += np.array([float(logp[position, lm.token_index(a)] - logp_removed[position, lm.token_index(a)])
                              for a in AMINO_ACIDS])
    assert np.abs(total[0] - expected).max() <= 1e-5 and np.abs(expected).max() > 0


def test_effect_positions_are_the_most_active():
    z = torch.zeros(6, 2)
    z[:, 1] = torch.tensor([0.5, 0.0, 2.0, 0.5, 1.0, 0.0])
    assert effect_positions(z, 1, 2) == [3, 5]  # tokens: residue i is token i
    assert effect_positions(z, 1, 3) == [1, 3, 5]  # a tie at 0.5 goes to the earlier position
    assert effect_positions(z, 0, 3) == []


def planted_sae(lm, layer: int, residue: str, feature: int = 3, d_sae: int = 16, k: int = 4) -> TopKSAE:
    """An SAE whose feature `feature` is a linear detector of `residue` on the WT sequences at `layer`
    (least squares on the normalized vectors, threshold half-way between the classes); every other
    feature's pre-activation is -1, so only the detector can be positive."""
    xs, residues = [], []
    for seq in WT.values():
        xs.append(lm.hidden(lm.tokenize([seq]), layer)[0, 1:-1])
        residues += list(seq)
    x = torch.cat(xs)
    x_hat = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)
    y = torch.tensor([1.0 if r == residue else -1.0 for r in residues])
    design = torch.cat([x_hat, torch.ones(len(x_hat), 1)], 1)
    w = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    score = design @ w
    lowest, highest = float(score[y > 0].min()), float(score[y < 0].max())
    assert lowest > highest + 0.2  # separable with a margin, so padding's rounding cannot flip a position
    w_enc = torch.zeros(lm.embed_dim, d_sae)
    w_enc[:, feature] = w[:-1]
    b_enc = torch.full((d_sae,), -1.0)
    b_enc[feature] = float(w[-1]) - (lowest + highest) / 2
    w_dec = torch.randn(d_sae, lm.embed_dim, generator=torch.Generator().manual_seed(0))
    return TopKSAE(w_enc, w_dec / w_dec.norm(dim=1, keepdim=True), b_enc, torch.zeros(lm.embed_dim), k=k)


@pytest.mark.parametrize("layer,residue", [(1, "L"), (3, "K")])
def test_planted_identity_feature_is_labelled(lm, tiny_dir, tmp_path, layer, residue):
    """The pipeline's own rules, on a planted detector of one residue: labelled 'X-identity' with F1 = 1."""
    sae_path = tmp_path / f"sae_l{layer}.safetensors"
    save_sae(planted_sae(lm, layer, residue), sae_path)
    settings = DEFAULTS.features
    characterize_features(settings.activity, dict(WT), layer, 4, FAIR_ESM, RUNTIME, tiny_dir / "esm2_tiny.pt",
                          sae_path, None, tmp_path / "activity.npz", tmp_path / "examples.csv")
    pd.DataFrame(columns=TABLES["output_effects"]).to_csv(tmp_path / "effects.csv", index=False)
    label_features({layer: tmp_path / "activity.npz"}, {layer: tmp_path / "effects.csv"},
                   settings.identity_f1, tmp_path / "labels.csv")
    table = read_table(tmp_path / "labels.csv", "feature_labels").set_index("feature")
    planted = table.loc[3]
    assert planted["label"] == f"{residue}-identity" and planted["f1"] == 1.0 and bool(planted["identity"])
    assert planted["n_active"] == sum(seq.count(residue) for seq in WT.values())
    assert (table.drop(index=3)["n_active"] == 0).all()  # nothing else fires
    stats = Activity.read(tmp_path / "activity.npz")
    assert stats.n_positions == sum(len(s) for s in WT.values()) and set(stats.wt_latents) == set(WT)


def test_activity_streams_and_resumes(lm, tiny_dir, saes, tmp_path, monkeypatch):
    """A reference FASTA on top of the WT sequences; counts add up chunk by chunk, and a rerun reuses chunks."""
    rng = np.random.default_rng(0)
    fasta = tmp_path / "ref.fa"
    fasta.write_text("".join(f">s{i}\n{''.join(rng.choice(list(AMINO_ACIDS), 30 + i))}\n" for i in range(25))
                     + ">long\n" + "A" * 1100 + "\n>odd\nMKXV\n")
    settings = dataclasses.replace(DEFAULTS.features.activity, reference=str(fasta), max_sequences=20)
    monkeypatch.setattr(feature_activity_module, "ACTIVITY_CHUNK", 7)
    out = tmp_path / "activity.npz"
    args = (settings, dict(WT), 2, 8, FAIR_ESM, RUNTIME, tiny_dir / "esm2_tiny.pt", tiny_dir / "sae_l2.safetensors",
            str(fasta), out, tmp_path / "examples.csv")
    characterize_features(*args)
    whole = Activity.read(out)
    assert whole.n_sequences == len(WT) + 20  # the first 20 usable records, after the 3 WT sequences
    assert whole.n_positions == sum(map(len, WT.values())) + sum(30 + i for i in range(20))
    assert whole.n_active.sum() == whole.active_by_residue.sum()
    assert whole.residue_counts.sum() == whole.n_positions
    # Killed after two chunks: the rerun reuses them and writes the same counts.
    calls = []
    real = feature_activity

    def dies_on_the_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*a, **kw)

    monkeypatch.setattr(feature_activity_module, "feature_activity", dies_on_the_third)
    out.unlink()
    with pytest.raises(RuntimeError):
        characterize_features(*args)
    monkeypatch.setattr(feature_activity_module, "feature_activity", real)
    characterize_features(*args)
    again = Activity.read(out)
    for name in ("residue_counts", "n_active", "active_by_residue", "max_activation"):
        assert np.array_equal(getattr(again, name), getattr(whole, name))


def test_splice_and_activity_agree_on_wt_latents(lm, tiny_dir, tmp_path):
    """The cards' WT activations (padded batches) match the engine's own WT code."""
    sae_path = tiny_dir / "sae_l2.safetensors"
    characterize_features(DEFAULTS.features.activity, dict(WT), 2, 8, FAIR_ESM, RUNTIME, tiny_dir / "esm2_tiny.pt",
                          sae_path, None, tmp_path / "a.npz", tmp_path / "examples.csv")
    stats = Activity.read(tmp_path / "a.npz")
    from esmsae.model.sae import load_sae

    sae = load_sae(sae_path, 8, layer=2, d_in=lm.embed_dim)
    for name, seq in WT.items():
        code = Splice(lm, sae, seq, 2).wt_code(torch.arange(1, len(seq) + 1))
        assert np.abs(stats.wt_latents[name] - code.z.numpy()).max() <= 1e-4


def test_config_defaults_for_features():
    loaded = load({"outdir": "o", "esm_checkpoint": "m", "sae": {"dir": "s", "pattern": "l{layer}", "k": 8},
                   "proteins": {"P": {"wt_seq": "MKV"}}, "mutations": {"source": "model"},
                          "patching": {"layers": [1]}, "ig": {"layers": [1]}})
    assert loaded.features == dataclasses.replace(DEFAULTS.features)
    assert (loaded.features.identity_f1, loaded.features.max_positions, loaded.features.reference) == (0.8, 8, None)


def test_unreadable_activity_names_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.npz: feature activity not found"):
        Activity.read(tmp_path / "missing.npz")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="cut.npz: not a readable feature activity file"):
        Activity.read(tmp_path / "cut.npz")
