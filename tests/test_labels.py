"""Feature labels: residue statistics by hand, labels, a planted identity feature, output effects, identity share."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses import feature_activity as feature_activity_module
from esmsae.analyses.arrays import Activity, Attributions
from esmsae.analyses.feature_activity import characterize_features, feature_activity
from esmsae.analyses.output_effects import effect_positions, output_effects
from esmsae.config.parse import load
from esmsae.config.settings import CircuitSizeSettings, Runtime
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.model.sae import TopKSAE, save_sae
from esmsae.model.splice import Splice
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.errors import InputError
from esmsae.tables.identity_share import identity_masks, identity_share, residues_of, tabulate_identity_share
from esmsae.tables.labels import (
    enriched,
    feature_table,
    group_f1,
    insert_labels,
    label,
    label_features,
    label_lookup,
    labels_by_feature,
    residue_scores,
    top_residues,
)
from esmsae.tables.shown_features import select_features, shown_features

from .conftest import DEFAULTS, FAIR_ESM, LAYERS, WT, splice_every_layer
from .planted import planted_detector
from .reference import hooked_logits

A = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
RUNTIME = Runtime(device="cpu", batch_size=None, trust_pickle=False)


def activity(active_by_residue, residue_counts, n_active=None, d_sae=None, **changes):
    """An Activity of hand-made counts (d_sae features over 20 residues)."""
    hits = np.asarray(active_by_residue, dtype=np.int64)
    d = hits.shape[0] if d_sae is None else d_sae
    values = dict(layer=2, k=4, d_sae=d, activations="interprot", n_sequences=1,
                  n_positions=int(np.sum(residue_counts)),
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
    table = shown_features({4: {7: 5, 9: 2}}, {4: {11: 1}}, universal, {4: {9: 3, 12: 1}, 2: {1: 4}}, max_cards=3,
                           activations="fair-esm")
    assert list(table.columns) == TABLES["shown_features"] and (table["activations"] == "fair-esm").all()
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
    (tests/planted.py)."""
    return planted_detector(lm, layer, residue, list(WT.values()), feature, d_sae, k)


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


# -- residue statistics and labels at their bars (METHOD.md "Feature characterization") ----------------------


def test_scores_of_a_feature_active_once_at_the_only_residue_of_its_kind():
    """Counts of exactly 1 are defined: W occurs once in the reference and the feature fires there alone,
    so P_W = 1/1, R_W = 1/1 and F1_W = 2·1/(1 + 1) = 1: an identity feature (n_active = 1 is active)."""
    hits = np.stack([counts(W=1), counts()])
    reference = counts(W=1, A=3)
    precision, recall, f1 = residue_scores(hits, hits.sum(1), reference)
    assert (precision[0, A["W"]], recall[0, A["W"]], f1[0, A["W"]]) == (1.0, 1.0, 1.0)
    assert not precision[:, A["A"]].any() and not recall[:, A["A"]].any() and not f1[:, A["A"]].any()
    table = feature_table(activity(hits, reference), identity_f1=0.8)
    assert table["identity"].tolist() == [True, False] and table.loc[0, "label"] == "W-identity"
    # A bar of 0 still never makes an inactive feature an identity feature (its F1 is 0, "≥ 0").
    assert feature_table(activity(hits, reference), identity_f1=0.0)["identity"].tolist() == [True, False]


def test_identity_bar_exactly_at_three_quarters():
    """3 of 4 activations at L, 4 L in the reference: F1 = 2·3/(4 + 4) = 0.75 exactly (binary-exact);
    at identity_f1 0.75 it is an identity feature, the next double above the bar it is not."""
    hits = np.stack([counts(L=3, A=1)])
    reference = counts(L=4, A=12)
    f1 = residue_scores(hits, hits.sum(1), reference)[2][0, A["L"]]
    assert f1 == 0.75
    on_bar = feature_table(activity(hits, reference), identity_f1=0.75)
    assert bool(on_bar.loc[0, "identity"]) and on_bar.loc[0, "label"] == "L-identity"
    above = feature_table(activity(hits, reference), identity_f1=float(np.nextafter(0.75, 1)))
    # Not identity: P_L = 3/4 holds half the activations, so the label is the enriched one, F1 of {L} 0.75.
    assert not bool(above.loc[0, "identity"]) and above.loc[0, "label"] == "L-enriched (F1 0.75)"


def test_feature_table_columns_by_hand():
    """frequency = n_active / #positions (8 positions: 2 → 0.25, 8 → 1), the top residue's P and R, the
    SAE's settings, max_activation as given; an inactive feature has frequency 0 and P = R = F1 = 0."""
    hits = np.stack([counts(K=1, R=1), counts(K=4, R=4), counts()])
    reference = counts(K=4, R=4)  # 8 positions
    table = feature_table(activity(hits, reference, layer=5, k=3, max_activation=np.array([0.5, 2.0, 0.0])), 0.8)
    assert table["frequency"].tolist() == [0.25, 1.0, 0.0]
    assert table["n_active"].tolist() == [2, 8, 0] and table["n_active"].dtype == np.int64
    assert table["max_activation"].tolist() == [0.5, 2.0, 0.0]
    # Feature 0: K and R tie (P 1/2, R 1/4, F1 2·1/(2 + 4) = 1/3): K, alphabetically first.
    assert table.loc[0, "top_residue"] == "K"
    assert (table.loc[0, "precision"], table.loc[0, "recall"], table.loc[0, "f1"]) == (0.5, 0.25, 1 / 3)
    # Feature 1: P_K 1/2, R_K 1, F1 2·4/(8 + 4) = 2/3: not identity; K and R each hold half: "K-enriched".
    assert (table.loc[1, "precision"], table.loc[1, "recall"], table.loc[1, "f1"]) == (0.5, 1.0, 2 / 3)
    assert table.loc[1, "label"] == "K-enriched (F1 0.67)"  # group {K}: 2·4/(8 + 4)
    assert (table.loc[2, "precision"], table.loc[2, "recall"], table.loc[2, "f1"]) == (0.0, 0.0, 0.0)
    assert table["label"].tolist()[2] == "inactive on reference"
    assert table["layer"].tolist() == [5] * 3 and table["feature"].tolist() == [0, 1, 2]
    assert table["k"].tolist() == [3] * 3 and table["d_sae"].tolist() == [3] * 3
    assert table["n_effect_positions"].isna().all() and table["n_effect_positions"].dtype == "Int64"
    assert table["promotes"].isna().all()
    assert table["promotes_effect"].isna().all() and table["suppresses_effect"].isna().all()


def test_scores_where_undefined_are_zero_without_warnings():
    """An inactive feature (n_active 0) and residues absent from the reference: P, R and F1 are 0 there,
    computed without a division warning; a broad feature's label carries its top F1."""
    hits = np.stack([counts(), counts(A=1, C=1, D=1, E=1, F=1, G=1)])
    reference = counts(A=10, C=10, D=10, E=10, F=10, G=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision, recall, f1 = residue_scores(hits, hits.sum(1), reference)
        table = feature_table(activity(hits, reference), 0.8)
    assert not precision[0].any() and not recall[:, A["W"]].any() and not f1[0].any()
    # Feature 1: six residues at 1/6 each, the first three (alphabetically) hold half: enriched A/C/D.
    assert table["label"].tolist() == ["inactive on reference", "A/C/D-enriched (F1 0.17)"]  # 2·3/(6 + 30)
    seven = counts(A=1, C=1, D=1, E=1, F=1, G=1, H=1)
    broad = feature_table(activity(np.stack([seven]), counts(A=10, C=10, D=10, E=10, F=10, G=10, H=10)), 0.8)
    assert broad.loc[0, "label"] == "broad (top A, F1 0.12)"  # 3 of 7 < half; all F1 2·1/(7 + 10) = 0.118: A


def test_frequency_without_reference_positions_is_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN by definition, not by dividing 0 by 0
        table = feature_table(activity(np.zeros((2, 20)), np.zeros(20), n_active=np.zeros(2, dtype=np.int64)), 0.8)
    assert table["frequency"].isna().all() and table["label"].tolist() == ["inactive on reference"] * 2


def test_a_feature_active_once_but_not_identity_is_enriched():
    """One activation at K among 10 K: P_K = 1 (half the activity or more), F1 2·1/(1 + 10) = 2/11 < 0.8."""
    hits = np.stack([counts(K=1)])
    table = feature_table(activity(hits, counts(K=10)), 0.8)
    assert table.loc[0, "label"] == "K-enriched (F1 0.18)" and not bool(table.loc[0, "identity"])


def test_output_effects_map_onto_their_features_signed():
    """Effects rows arrive in any order and for some features only; promotes is the largest SIGNED Δ (L 0.5,
    not P with |Δ| 1), suppresses the smallest (P −1); n_effect_positions as measured."""
    hits = np.stack([counts(W=5), counts(K=3, A=1), counts(K=1)])
    delta = {aa: 0.0 for aa in AMINO_ACIDS}
    effects = pd.DataFrame([
        {"layer": 2, "feature": 2, "n_positions": 1, **(delta | {"A": 0.25, "C": -0.125}), "k": 4, "d_sae": 3},
        {"layer": 2, "feature": 0, "n_positions": 3, **(delta | {"L": 0.5, "P": -1.0}), "k": 4, "d_sae": 3},
    ])
    table = feature_table(activity(hits, counts(W=5, K=20, A=20)), 0.8, effects)
    assert table["promotes"].tolist() == ["L", None, "A"]
    assert table["promotes_effect"].tolist()[::2] == [0.5, 0.25] and np.isnan(table.loc[1, "promotes_effect"])
    assert table["suppresses"].tolist() == ["P", None, "C"]
    assert table["suppresses_effect"].tolist()[::2] == [-1.0, -0.125]
    assert table["n_effect_positions"].tolist() == [3, pd.NA, 1]
    assert table.loc[0, "label"] == "W-identity; promotes L"
    assert table.loc[1, "label"] == "K-enriched (F1 0.25)"  # P_K 3/4 ≥ half; group {K}: 2·3/(4 + 20)
    assert table.loc[2, "label"] == "K-enriched (F1 0.10); promotes A"  # 2·1/(1 + 20) = 0.095
    empty = feature_table(activity(hits, counts(W=5, K=20, A=20)), 0.8, effects.iloc[:0])
    assert empty["promotes"].isna().all() and empty["n_effect_positions"].isna().all()


def test_enriched_at_its_bars():
    """Half exactly (0.5, binary-exact) is enough; the bar's float tolerance itself counts (≥); three residues
    at most, even when four would reach half; precision ties go alphabetically (lower index)."""
    rest = np.zeros(20)
    assert enriched(rest + np.eye(20)[3] * 0.5 + np.eye(20)[7] * 0.25 + np.eye(20)[9] * 0.25) == [3]
    on_tolerance = rest.copy()
    on_tolerance[[2, 5]] = [0.5 - 1e-12, 0.4]
    assert enriched(on_tolerance) == [2]
    four = np.full(20, 0.45 / 16)
    four[[0, 1, 2, 3]] = [0.2, 0.15, 0.1, 0.1]  # three hold 0.45 < 0.5, four 0.55
    assert enriched(four) == []
    tied = rest.copy()
    tied[[0, 4, 9, 10, 18]] = 0.2  # any three reach 0.6: the alphabetically first three
    assert enriched(tied) == [0, 4, 9]
    assert enriched(rest) == []


def test_group_f1_with_no_hits_and_with_one():
    """No activation in the group: 0 (not 2·0/(n + count) by accident of the formula: 0 even for 0 + 0);
    one hit of 3 activations, group 5 in the reference: 2·1/(3 + 5) = 0.25."""
    assert group_f1(counts(A=3), 3, counts(A=3, K=5), [A["K"]]) == 0.0
    assert group_f1(counts(), 0, counts(), [A["K"]]) == 0.0
    assert group_f1(counts(A=2, K=1), 3, counts(A=3, K=5), [A["K"]]) == 0.25


def test_label_without_a_known_effect_has_no_suffix():
    assert label(3, A["L"], 1.0, True, [], 0.0, None) == "L-identity"
    assert label(3, A["L"], 1.0, True, [], 0.0, "") == "L-identity"
    assert label(3, A["D"], 0.5, False, [A["D"], A["E"], A["K"]], 0.5, "E") == "D/E/K-enriched (F1 0.50); promotes E"


def test_label_lookups_and_insertion():
    """labels_by_feature keeps one layer; label_lookup keys by (layer, feature) with "" for a missing label;
    insert_labels puts `label` right after `feature`, by the frame's layer or the one given."""
    table = pd.DataFrame({"layer": [2, 2, 3], "feature": [5, 7, 5], "label": ["L-identity", np.nan, "broad"]})
    assert labels_by_feature(table.fillna(""), 2) == {5: "L-identity", 7: ""}
    assert labels_by_feature(table, 3) == {5: "broad"}
    lookup = label_lookup(table.astype({"layer": float, "feature": float}))
    assert lookup == {(2, 5): "L-identity", (2, 7): "", (3, 5): "broad"}
    frame = pd.DataFrame({"mutant": ["a", "b", "c"], "layer": [3, 2, 2], "feature": [5, 5, 9], "x": [1, 2, 3]},
                         index=[10, 11, 12])
    out = insert_labels(frame, lookup)
    assert list(out.columns) == ["mutant", "layer", "feature", "label", "x"]
    assert out["label"].tolist() == ["broad", "L-identity", ""] and out.index.tolist() == [10, 11, 12]
    assert out["label"].dtype == object  # built as object; pandas 3 alone would infer its str dtype
    assert insert_labels(frame, lookup, layer=2)["label"].tolist() == ["L-identity", "L-identity", ""]
    assert insert_labels(frame, None)["label"].tolist() == ["", "", ""]
    assert list(frame.columns) == ["mutant", "layer", "feature", "x"]  # the input is left alone


def test_label_features_writes_every_layer_in_order(tmp_path):
    """Two layers given out of order: rows by layer, each layer's effects on its own features."""
    paths, effect_paths = {}, {}
    for layer, residue in ((4, "K"), (2, "W")):
        hits = np.stack([counts(**{residue: 5}), counts(A=1)])
        activity(hits, counts(**{residue: 5}, A=10), layer=layer).write(tmp_path / f"a{layer}.npz")
        paths[layer] = tmp_path / f"a{layer}.npz"
        row = {"layer": layer, "feature": 1, "n_positions": 1, **{aa: 0.0 for aa in AMINO_ACIDS}, "k": 4, "d_sae": 2}
        row["D" if layer == 2 else "E"] = 1.0
        pd.DataFrame([row], columns=TABLES["output_effects"]).to_csv(tmp_path / f"e{layer}.csv", index=False)
        effect_paths[layer] = tmp_path / f"e{layer}.csv"
    label_features(paths, effect_paths, 0.8, tmp_path / "labels.csv")
    table = read_table(tmp_path / "labels.csv", "feature_labels")
    assert list(table.columns) == TABLES["feature_labels"]
    assert table[["layer", "feature"]].values.tolist() == [[2, 0], [2, 1], [4, 0], [4, 1]]
    assert table["label"].tolist() == ["W-identity", "A-enriched (F1 0.18); promotes D",
                                       "K-identity", "A-enriched (F1 0.18); promotes E"]  # 2·1/(1 + 10)


# -- identity share (METHOD.md "Feature characterization": WT side and mutant side) -----------------------


def test_residues_of_single_and_multi_site_mutants():
    assert residues_of("V5H:D39R", "wt") == {"V", "D"} and residues_of("V5H:D39R", "mut") == {"H", "R"}
    assert residues_of("A10G", "wt") == {"A"} and residues_of("A10G", "mut") == {"G"}
    assert residues_of("K3R:K7E", "wt") == {"K"} and residues_of("K3R:K7E", "mut") == {"R", "E"}


def test_identity_share_with_small_denominators_and_no_changed_feature():
    """D = 0.25 + 0.25 = 0.5 (below 1 is still a denominator): share 0.5; null Σ|Δ| = 0.5: share 1.
    No changed feature: the share of D = |A_err| is 0 and the null (Σ|Δ| = 0) is undefined."""
    out = identity_share(np.array([0.25, 0.0]), 0.25, np.array([0.5, 0.0]), np.array([True, False]),
                         np.array([False, False]))
    assert (out["wt_identity_share"], out["wt_identity_share_null"]) == (0.5, 1.0)
    assert (out["mut_identity_share"], out["mut_identity_share_null"]) == (0.0, 0.0)
    none = identity_share(np.array([1.0, 2.0]), 2.0, np.zeros(2), np.array([True, True]), np.array([True, False]))
    assert none["wt_identity_share"] == 0.0 and none["mut_identity_share"] == 0.0
    assert np.isnan(none["wt_identity_share_null"]) and np.isnan(none["mut_identity_share_null"])
    assert none["n_wt_identity_features"] == 0 and none["n_mut_identity_features"] == 0


def test_identity_share_with_nothing_at_all_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = identity_share(np.zeros(2), 0.0, np.zeros(2), np.array([True, False]), np.array([False, True]))
    assert all(np.isnan(out[f"{side}_identity_share{null}"]) for side in ("wt", "mut") for null in ("", "_null"))


def test_identity_masks_take_identity_features_only():
    labels = pd.DataFrame({"feature": [0, 1, 2, 3], "top_residue": ["V", "V", "K", "A"],
                           "identity": [True, False, True, True]})
    masks = identity_masks(labels, 5)
    assert set(masks) == set(AMINO_ACIDS)
    assert all(mask.dtype == bool for mask in masks.values())
    assert masks["V"].tolist() == [True, False, False, False, False]
    assert masks["K"].tolist() == [False, False, True, False, False]
    assert masks["A"].tolist() == [False, False, False, True, False]
    assert not any(masks[aa].any() for aa in AMINO_ACIDS if aa not in "VKA")


def identity_labels(rows: list[tuple[int, int, str, bool]]) -> pd.DataFrame:
    """A feature_labels table with only the rows' (layer, feature, top_residue, identity) filled in."""
    table = pd.DataFrame(rows, columns=["layer", "feature", "top_residue", "identity"])
    for column in TABLES["feature_labels"]:
        if column not in table:
            table[column] = 0
    return table[TABLES["feature_labels"]]


def ig_file(path, mutants, attribution, error, abs_delta, layer, activations="fair-esm"):
    Attributions(mutant=np.array(mutants), attribution=np.array(attribution, dtype=float),
                 abs_delta=np.array(abs_delta, dtype=float), error_attribution=np.array(error, dtype=float),
                 total_effect=np.zeros(len(mutants)), completeness_error=np.zeros(len(mutants)),
                 quadrature_delta=np.zeros(len(mutants)), steps=8, rule="gauss", space="latent", k=4, d_sae=6,
                 error_node=True, layer=layer, activations=activations).write(path)
    return path


def test_tabulate_identity_share_by_hand(tmp_path):
    """Layer 2: identity features 0 (V), 1 (D), 2 (H), 3 (R), 5 (A); feature 4's top residue is V but it is
    not an identity feature. Layer 3: feature 0 is an R-identity feature.

    Q, layer 2, V5H:D39R: |A| = [1, 2, 4, 8, 16, ·] over C = {0..4} (feature 5 never moves), |A_err| = 1:
    D = 32. WT {V, D} → features {0, 1}: 3/32; mutant {H, R} → {2, 3}: 12/32. Null Σ|Δ| = 8: WT (1 + 3)/8,
    mutant (2 + 1)/8. V5A: |A| = [2, ·, ·, ·, ·, 4], |A_err| = 2, C = {0, 5}: D = 8, WT 2/8, mutant (A) 4/8;
    null 1/2 and 1/2. Means over the two mutants and the SEM of two values, |a − b|/2:
    WT 11/64 ± 5/64, mutant 7/16 ± 1/16, WT null 1/2 ± 0, mutant null 7/16 ± 1/16.
    P, layer 3, D39R: only feature 0 (R at layer 3, V at layer 2) counts: mutant 4/(4 + 4) = 1/2, WT 0.
    """
    labels = identity_labels([(2, 0, "V", True), (2, 1, "D", True), (2, 2, "H", True), (2, 3, "R", True),
                              (2, 4, "V", False), (2, 5, "A", True), (3, 0, "R", True), (3, 1, "D", False)])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    q = ig_file(tmp_path / "q.npz", ["V5H:D39R", "V5A"],
                [[1, -2, 4, -8, 16, 0.5], [2, 0, 0, 0, 0, -4]], [-1, 2],
                [[1, 3, 2, 1, 1, 0], [1, 0, 0, 0, 0, 1]], 2)
    p = ig_file(tmp_path / "p.npz", ["D39R"], [[4, 1, 0, 0, 0, 0]], [4], [[1, 0, 0, 0, 0, 0]], 3)
    out = {"mutants": tmp_path / "mutants.csv", "table": tmp_path / "table.csv"}
    tabulate_identity_share(tmp_path / "labels.csv", {("Q", 2): q, ("P", 3): p}, out)
    mutants = read_table(out["mutants"], "identity_share_mutants")
    assert list(mutants.columns) == TABLES["identity_share_mutants"]
    assert mutants[["protein", "layer", "mutant", "wt", "mut"]].values.tolist() == [
        ["Q", 2, "V5H:D39R", "D:V", "H:R"], ["Q", 2, "V5A", "V", "A"], ["P", 3, "D39R", "D", "R"]]
    assert mutants["wt_identity_share"].tolist() == [3 / 32, 0.25, 0.0]
    assert mutants["mut_identity_share"].tolist() == [12 / 32, 0.5, 0.5]
    assert mutants["wt_identity_share_null"].tolist() == [0.5, 0.5, 0.0]
    assert mutants["mut_identity_share_null"].tolist() == [3 / 8, 0.5, 1.0]
    assert mutants["n_wt_identity_features"].tolist() == [2, 1, 0]
    assert mutants["n_mut_identity_features"].tolist() == [2, 1, 1]
    assert mutants[["k", "d_sae", "space", "activations"]].values.tolist() == [[4, 6, "latent", "fair-esm"]] * 3
    table = read_table(out["table"], "identity_share")
    assert list(table.columns) == TABLES["identity_share"]
    assert table[["protein", "layer", "n_mutants", "n_identity_features"]].values.tolist() == [
        ["Q", 2, 2, 5], ["P", 3, 1, 1]]  # in input order, not sorted
    q_row = table.iloc[0]
    assert (q_row["wt_identity_share_mean"], q_row["wt_identity_share_sem"]) == (11 / 64, pytest.approx(5 / 64))
    assert (q_row["mut_identity_share_mean"], q_row["mut_identity_share_sem"]) == (7 / 16, pytest.approx(1 / 16))
    assert (q_row["wt_identity_share_null_mean"], q_row["wt_identity_share_null_sem"]) == (0.5, 0.0)
    assert (q_row["mut_identity_share_null_mean"], q_row["mut_identity_share_null_sem"]) == (7 / 16,
                                                                                           pytest.approx(1 / 16))
    assert table.iloc[1]["mut_identity_share_mean"] == 0.5 and np.isnan(table.iloc[1]["mut_identity_share_sem"])
    assert table[["k", "d_sae", "space", "activations"]].values.tolist() == [[4, 6, "latent", "fair-esm"]] * 2


# -- shown features: which get a card (universal by #proteins, then circuit features by #mutants) ---------------


def cards(table: pd.DataFrame) -> list[tuple[int, int]]:
    return [tuple(key) for key in table.loc[table["card"], ["layer", "feature"]].values.tolist()]


def test_card_priority_at_its_boundaries():
    universal = pd.DataFrame({"feature": [7, 3, 5, 8], "layer": [4, 4, 4, 2],
                              "proteins": ["P;Q;R", "P;Q", "P;Q", "Q;R"]})
    circuits = {4: {9: 3, 12: 1, 13: 0}, 2: {10: 3, 6: 4}}
    shown = {4: {7: 5, 14: 9}}

    def carded(n):
        return cards(shown_features(shown, {}, universal, circuits, max_cards=n, activations="interprot"))

    # Three proteins first; then the two-protein ones by layer (L2 F8), then by feature (L4 F3 before L4 F5).
    assert carded(1) == [(4, 7)]
    assert set(carded(2)) == {(4, 7), (2, 8)}
    assert set(carded(3)) == {(4, 7), (2, 8), (4, 3)}
    assert set(carded(4)) == {(4, 7), (2, 8), (4, 3), (4, 5)}
    # Then circuit features, more mutants first (L2 F6: 4), a tie at 3 by layer (L2 F10 before L4 F9), then 1.
    assert set(carded(5)) - set(carded(4)) == {(2, 6)}
    assert set(carded(6)) - set(carded(5)) == {(2, 10)}
    assert set(carded(7)) - set(carded(6)) == {(4, 9)}
    assert set(carded(8)) - set(carded(7)) == {(4, 12)}  # one mutant's circuit is enough
    # Never a card: 0 mutants' circuits, or only in an IG top-20 (L4 F14, 9 mutants), however many cards.
    assert len(carded(100)) == 8 and carded(0) == []
    table = shown_features(shown, {}, universal, circuits, max_cards=100, activations="interprot")
    assert table[["layer", "feature"]].values.tolist() == [[2, 6], [2, 8], [2, 10], [4, 3], [4, 5], [4, 7], [4, 9],
                                                           [4, 12], [4, 13], [4, 14]]
    assert table["circuits"].tolist() == [4, 0, 3, 0, 0, 0, 3, 1, 0, 0]
    assert table["ig_top20"].tolist() == [0, 0, 0, 0, 0, 5, 0, 0, 0, 9]
    assert table["universal"].tolist() == [False, True, False, True, True, True, False, False, False, False]
    assert table["layer"].dtype == np.int64 and table["feature"].dtype == np.int64


def test_a_universal_circuit_feature_takes_one_card():
    """L4 F7 is universal and in 10 circuits: one card, as a universal feature; the next card goes to L4 F9."""
    universal = pd.DataFrame({"feature": [7], "layer": [4], "proteins": ["P;Q"]})
    table = shown_features({}, {4: {2: 1}}, universal, {4: {7: 10, 9: 1}}, max_cards=2, activations="interprot")
    assert cards(table) == [(4, 7), (4, 9)]
    assert table["top_patch"].tolist() == [1, 0, 0] and table["circuits"].tolist() == [0, 10, 1]


def patching_rows(mutant: str, layer: int, effects: dict[int, float], control: str = "real") -> list[dict]:
    return [{"mutant": mutant, "position": "5", "layer": layer, "feature": f, "control": control, "wt_pre": 0.0,
             "mut_pre": 0.0, "wt_latent": 0.0, "mut_latent": 1.0, "patched_value": 1.0, "baseline_score": 0.0,
             "patched_score": e, "effect": e, "k": 4, "d_sae": 6, "space": "latent", "activations": "fair-esm"}
            for f, e in effects.items()]


def curve_rows(mutant: str, layer: int, joined: list[int], recovered: list[float], full_effect: float) -> list[dict]:
    return [{"mutant": mutant, "n_features": n, "feature": "" if n == 0 else joined[n - 1], "patched_score": 0.0,
             "recovered_fraction": r, "complement_score": 0.0, "complement_fraction": 0.0,
             "full_effect": full_effect, "layer": layer, "k": 4, "d_sae": 6, "space": "latent",
             "activations": "fair-esm"} for n, r in enumerate([0.0, *recovered])]


def test_select_features_from_hand_made_results(tmp_path):
    """Layer 4: IG top-20s (the nonzero |A|) P m1 {0, 1}, P m2 {1, 5}, Q m1 {1, 4}: counts 0:1, 1:3, 4:1, 5:1;
    F1 is in the top-20 of every mutant of both proteins: universal. Largest |real effect| per mutant:
    P m1 F0 (|−0.5| ties F3's 0.5: lower feature; the random control's 5 is not a real patch), P m2 F2
    (|−0.25| over F5's 0.125), Q m1 F4. Minimal circuits (recover 0.9): P m1 {3, 0} (r 0.5, 0.95), P m2 {3};
    Q m1 is negligible (|F| 0.001 < 0.05). Layer 2: P m1's top-20 is {5}. With two cards: F1 (universal),
    then L4 F3 (2 circuits) before L4 F0 (1)."""
    ig = {("P", 4): ig_file(tmp_path / "p4.npz", ["m1", "m2"], [[1, -2, 0, 0, 0, 0], [0, 3, 0, 0, 0, -1]], [0, 0],
                            [[1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 1]], 4),
          ("Q", 4): ig_file(tmp_path / "q4.npz", ["m1"], [[0, 1, 0, 0, 4, 0]], [0], [[0, 1, 0, 0, 1, 0]], 4),
          ("P", 2): ig_file(tmp_path / "p2.npz", ["m1"], [[0, 0, 0, 0, 0, 2]], [0], [[0, 0, 0, 0, 0, 1]], 2)}
    patching = {("P", 4): tmp_path / "p4_patch.csv", ("Q", 4): tmp_path / "q4_patch.csv"}
    pd.DataFrame(patching_rows("m1", 4, {3: 0.5, 0: -0.5, 1: 0.25}) + patching_rows("m1", 4, {2: 5.0}, "random")
                 + patching_rows("m2", 4, {5: 0.125, 2: -0.25})).to_csv(patching[("P", 4)], index=False)
    pd.DataFrame(patching_rows("m1", 4, {4: 1.0, 1: 0.5})).to_csv(patching[("Q", 4)], index=False)
    curves = {("P", 4): tmp_path / "p4_curves.csv", ("Q", 4): tmp_path / "q4_curves.csv"}
    pd.DataFrame(curve_rows("m1", 4, [3, 0], [0.5, 0.95], 1.0)
                 + curve_rows("m2", 4, [3, 1], [1.0, 1.0], -2.0)).to_csv(curves[("P", 4)], index=False)
    pd.DataFrame(curve_rows("m1", 4, [4], [1.0], 0.001)).to_csv(curves[("Q", 4)], index=False)
    select_features(ig, patching, curves, CircuitSizeSettings(recover=0.9, min_effect=0.05), 2, tmp_path / "s.csv")
    table = read_table(tmp_path / "s.csv", "shown_features")
    assert list(table.columns) == TABLES["shown_features"] and (table["activations"] == "fair-esm").all()
    assert table[["layer", "feature"]].values.tolist() == [[2, 5]] + [[4, f] for f in range(6)]
    # patches of another forward than the IG they are shown beside: two studies mixed
    pd.DataFrame(patching_rows("m1", 4, {4: 1.0, 1: 0.5})).assign(activations="interprot").to_csv(
        patching[("Q", 4)], index=False)
    with pytest.raises(InputError, match=r"^shown features: inputs measured on different forwards \(activations "
                                         r"fair-esm, interprot\)"):
        select_features(ig, patching, curves, CircuitSizeSettings(recover=0.9, min_effect=0.05), 2,
                        tmp_path / "s2.csv")
    assert not (tmp_path / "s2.csv").exists()
    assert table["ig_top20"].tolist() == [1, 1, 3, 0, 0, 1, 1]
    assert table["top_patch"].tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert table["universal"].tolist() == [False, False, True, False, False, False, False]
    assert table["circuits"].tolist() == [0, 1, 0, 0, 2, 0, 0]
    assert table["card"].tolist() == [False, False, True, False, True, False, False]


def test_tabulate_identity_share_without_results_writes_empty_tables(tmp_path):
    identity_labels([(2, 0, "V", True)]).to_csv(tmp_path / "labels.csv", index=False)
    out = {"mutants": tmp_path / "mutants.csv", "table": tmp_path / "table.csv"}
    tabulate_identity_share(tmp_path / "labels.csv", {}, out)
    assert len(read_table(out["mutants"], "identity_share_mutants")) == 0
    assert len(read_table(out["table"], "identity_share")) == 0
