"""Feature activity counts, output effects and the Activity file, each against numbers worked out by hand.

The activity pass runs here on a stand-in model and SAE whose latents are known in closed form, so
every count, sum and maximum is written down by hand; the output effects run on the tiny model of
tests/conftest.py against a hooked fair-esm forward (tests/reference.py).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses import feature_activity as feature_activity_module
from esmsae.analyses import output_effects as output_effects_module
from esmsae.analyses.arrays import Activity, Attributions, sum_activity
from esmsae.analyses.feature_activity import RESIDUE_INDEX, characterize_features, feature_activity
from esmsae.analyses.output_effects import measure_output_effects, output_effects
from esmsae.config.settings import Runtime
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.model.demo import write_tiny_esm2
from esmsae.model.sae import random_sae, save_sae
from esmsae.model.splice import Splice
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.errors import InputError

from .conftest import D_SAE, DEFAULTS, FAIR_ESM, TINY, WT, K
from .reference import hooked_logits

A = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
RUNTIME = Runtime(device="cpu", batch_size=None, trust_pickle=False)


class StandInLM:
    """The two things feature_activity asks of a model. ``h`` at token t of a sequence is
    ``[residue index + 1, t]`` (0 at BOS, EOS and padding) in float32, as a model's states are;
    every batch it tokenizes is recorded."""

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.activations = "fair-esm"  # the forward, as EsmLM names it: recorded in the Activity
        self.batches: list[list[str]] = []

    def tokenize_padded(self, seqs: list[str]) -> torch.Tensor:
        if not seqs:
            raise ValueError("tokenize_padded needs a non-empty list of sequences")  # as EsmLM's
        self.batches.append(list(seqs))
        tokens = torch.zeros(len(seqs), max(map(len, seqs)) + 2, dtype=torch.long)
        for row, seq in enumerate(seqs):
            tokens[row, 1:len(seq) + 1] = torch.tensor([RESIDUE_INDEX[c] + 1 for c in seq])
        return tokens.to(self.device)

    def hiddens(self, tokens: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        position = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        return {layers[0]: torch.stack([tokens.float(), position.float()], -1)}


class StandInSAE:
    """Three features: z_0 = 1/t at an A at token t, z_1 = 0.25 at every K, z_2 never positive. Its weights
    are float64: the states must arrive in the SAE's own dtype (a bf16 model beside an fp32 SAE)."""

    k = 2
    info = SimpleNamespace(d_sae=3)

    def __init__(self, device: str = "cpu"):
        self.w_enc = torch.zeros(1, dtype=torch.float64, device=device)

    def encode(self, x: torch.Tensor):
        assert x.dtype == self.w_enc.dtype and x.device == self.w_enc.device
        residue, t = x[:, 0].long() - 1, x[:, 1]
        z = torch.zeros(len(x), 3, dtype=torch.float64, device=x.device)
        z[:, 0] = torch.where(residue == A["A"], 1 / t, 0.0)
        z[:, 1] = torch.where(residue == A["K"], 0.25, 0.0)
        return None, z, None, None


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


SEQUENCES = [("P", "AKA"), ("Q", "KK"), ("r1", "AAAA"), ("r2", "KAK")]


def check_counts(activity: Activity) -> None:
    """The counts of SEQUENCES by hand. A: 2 (P) + 4 (r1) + 1 (r2) = 7; K: 1 + 2 + 2 = 5; 12 positions.
    Σ z_0 = (1 + 1/3) [P] + (1 + 1/2 + 1/3 + 1/4) [r1] + 1/2 [r2] = 47/12, its largest 1; Σ z_1 = 5 · 0.25."""
    assert (activity.layer, activity.k, activity.d_sae) == (3, 2, 3)
    assert (activity.n_sequences, activity.n_positions) == (4, 12)
    assert activity.residue_counts.tolist() == [7 if aa == "A" else 5 if aa == "K" else 0 for aa in AMINO_ACIDS]
    assert activity.n_active.tolist() == [7, 5, 0]
    assert activity.residue_counts.dtype == activity.n_active.dtype == activity.active_by_residue.dtype == np.int64
    expected = np.zeros((3, 20), dtype=np.int64)
    expected[0, A["A"]], expected[1, A["K"]] = 7, 5
    assert activity.active_by_residue.tolist() == expected.tolist()
    assert activity.activation_by_residue.dtype == np.float64
    assert abs(activity.activation_by_residue[0, A["A"]] - 47 / 12) <= 1e-12  # float64 sums: float32 is off by ~1e-7
    assert activity.activation_by_residue[1, A["K"]] == 1.25
    assert np.count_nonzero(activity.activation_by_residue) == 2
    assert activity.max_activation.tolist() == [1.0, 0.25, 0.0]
    # Only the configured WT sequences keep latents, each its own rows whatever batch it ran in.
    assert set(activity.wt_latents) == {"P", "Q"}
    assert np.array_equal(activity.wt_latents["P"], np.array([[1, 0, 0], [0, 0.25, 0], [1 / 3, 0, 0]], np.float32))
    assert np.array_equal(activity.wt_latents["Q"], np.array([[0, 0.25, 0], [0, 0.25, 0]], np.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_activity_counts_by_hand_in_one_batch_of_many_encode_chunks(monkeypatch, device):
    """All four sequences in one padded batch (WT and reference together), encoded 2 positions at a time, so
    the largest z_0 (1, at token 1) is in an earlier chunk than the last one (1/3 and 1/4, r1's end)."""
    monkeypatch.setattr(feature_activity_module, "ENCODE_ROWS", 2)
    lm = StandInLM(device)
    check_counts(feature_activity(lm, StandInSAE(device), 3, iter(SEQUENCES), ["P", "Q"])[0])
    assert lm.batches == [["KK", "AKA", "KAK", "AAAA"]]  # sorted by length (ties: input order)


def test_activity_batches_at_the_token_bar():
    """buffer 3: P, Q, r1 are read first and sorted (Q 2, P 3, r1 4 residues); a batch holds at most
    max_tokens = 10 padded tokens: Q + P is 2 · (3 + 2) = 10, exactly the bar, so they share a batch;
    adding r1 would make 3 · (4 + 2) = 18. Then r2 alone, from the next buffer."""
    lm = StandInLM()
    check_counts(feature_activity(lm, StandInSAE(), 3, iter(SEQUENCES), ["P", "Q"], buffer=3, max_tokens=10)[0])
    assert lm.batches == [["KK", "AKA"], ["AAAA"], ["KAK"]]
    one_under = StandInLM()
    check_counts(feature_activity(one_under, StandInSAE(), 3, iter(SEQUENCES), ["P", "Q"], buffer=3,
                                  max_tokens=9)[0])
    assert one_under.batches == [["KK"], ["AKA"], ["AAAA"], ["KAK"]]
    # A sequence longer than max_tokens on its own still runs, alone.
    alone = StandInLM()
    check_counts(feature_activity(alone, StandInSAE(), 3, iter(SEQUENCES), ["P", "Q"], max_tokens=3)[0])
    assert alone.batches == [["KK"], ["AKA"], ["KAK"], ["AAAA"]]


def test_activity_default_buffer_and_token_bar():
    """By default 256 sequences are sorted together: the 257th, the shortest, comes last in its own batch.
    Five sequences of 3,275 residues are 5 · 3,277 = 16,385 tokens, one over the default 16,384: 4 + 1."""
    lm = StandInLM()
    seqs = [(f"s{i}", "A" * (3 + i % 5)) for i in range(256)] + [("last", "K")]
    feature_activity(lm, StandInSAE(), 3, seqs, [])
    assert [len(batch) for batch in lm.batches] == [256, 1] and lm.batches[-1] == ["K"]
    long = StandInLM()
    feature_activity(long, StandInSAE(), 3, [(f"l{i}", "K" * 3275) for i in range(5)], [])
    assert [len(batch) for batch in long.batches] == [4, 1]
    exact = StandInLM()
    feature_activity(exact, StandInSAE(), 3, [(f"e{i}", "K" * 4094) for i in range(4)], [])
    assert [len(batch) for batch in exact.batches] == [4]  # 4 · 4,096 = 16,384: on the bar


def test_activity_of_no_sequences_is_empty():
    empty, _ = feature_activity(StandInLM(), StandInSAE(), 3, iter([]), ["P"])
    assert (empty.n_sequences, empty.n_positions) == (0, 0) and not empty.n_active.any()
    assert empty.max_activation.tolist() == [0.0, 0.0, 0.0] and empty.wt_latents == {}
    assert empty.max_activation.dtype == empty.activation_by_residue.dtype == np.float64


# -- the Activity file ---------------------------------------------------------------------------------


def hand_activity(**changes) -> Activity:
    values = dict(layer=3, k=2, d_sae=2, activations="fair-esm", n_sequences=2, n_positions=5,
                  residue_counts=np.arange(20, dtype=np.int64), n_active=np.array([3, 0]),
                  active_by_residue=np.arange(40).reshape(2, 20), activation_by_residue=np.full((2, 20), 0.5),
                  max_activation=np.array([1.5, 0.0]),
                  wt_latents={"P": np.ones((3, 2), np.float32), "Q/2": np.zeros((2, 2), np.float32)})
    return Activity(**(values | changes))


def test_activity_file_round_trip(tmp_path):
    original = hand_activity()
    original.write(tmp_path / "a.npz")
    back = Activity.read(tmp_path / "a.npz")
    for name in ("layer", "k", "d_sae", "n_sequences", "n_positions"):
        assert getattr(back, name) == getattr(original, name) and type(getattr(back, name)) is int
    assert back.activations == "fair-esm" and type(back.activations) is str
    for name in ("residue_counts", "n_active", "active_by_residue", "activation_by_residue", "max_activation"):
        assert np.array_equal(getattr(back, name), getattr(original, name))
    assert set(back.wt_latents) == {"P", "Q/2"}  # a name with a slash keeps it
    assert np.array_equal(back.wt_latents["P"], original.wt_latents["P"])
    assert np.array_equal(back.wt_latents["Q/2"], original.wt_latents["Q/2"])


@pytest.mark.parametrize("name,shape", [("n_active", (3,)), ("active_by_residue", (2, 19)),
                                        ("activation_by_residue", (3, 20)), ("max_activation", (1,)),
                                        ("residue_counts", (21,))])
def test_activity_file_with_a_wrong_shape_names_the_array(tmp_path, name, shape):
    hand_activity(**{name: np.zeros(shape)}).write(tmp_path / "a.npz")
    expected = {"n_active": "(2,)", "active_by_residue": "(2, 20)", "activation_by_residue": "(2, 20)",
                "max_activation": "(2,)", "residue_counts": "(20,)"}[name]
    with pytest.raises(InputError, match=re.escape(f"a.npz: {name} has shape {shape}, expected {expected}")):
        Activity.read(tmp_path / "a.npz")


def test_activity_file_without_its_arrays_says_which(tmp_path):
    np.savez(tmp_path / "a.npz", layer=np.array(3), k=np.array(2))
    with pytest.raises(InputError, match=r"a.npz: not a feature activity file \(missing d_sae, activations, "
                                         r"n_sequences, n_positions, residue_counts, n_active, active_by_residue, "
                                         r"activation_by_residue, max_activation\)"):
        Activity.read(tmp_path / "a.npz")


def test_sum_activity_adds_counts_and_keeps_the_largest_activation():
    """Counts add (n_sequences 2 + 1, positions 5 + 4, n_active [3, 0] + [1, 2]); max_activation is the
    elementwise maximum ([1.5, 0] and [0.5, 2] → [1.5, 2]); the WT latents of both parts are kept."""
    first = hand_activity()
    second = hand_activity(n_sequences=1, n_positions=4, n_active=np.array([1, 2]),
                           residue_counts=np.ones(20, dtype=np.int64), active_by_residue=np.ones((2, 20)),
                           activation_by_residue=np.full((2, 20), 0.25), max_activation=np.array([0.5, 2.0]),
                           wt_latents={"R": np.full((1, 2), 2, np.float32)}, layer=9, k=7)
    total = sum_activity([first, second])
    assert (total.layer, total.k, total.d_sae, total.n_sequences, total.n_positions) == (3, 2, 2, 3, 9)
    assert total.n_active.tolist() == [4, 2]
    assert total.residue_counts.tolist() == list(range(1, 21))
    assert total.active_by_residue.tolist() == (np.arange(40).reshape(2, 20) + 1).tolist()
    assert total.activation_by_residue.tolist() == np.full((2, 20), 0.75).tolist()
    assert total.max_activation.tolist() == [1.5, 2.0]
    assert set(total.wt_latents) == {"P", "Q/2", "R"}
    assert sum_activity([first]).n_active.tolist() == [3, 0]


# -- output effects pooled over proteins (METHOD.md: mean over the positions actually used) ------------------


def wt_latents(lm, saes, layer):
    return {name: Splice(lm, saes[layer], seq, layer).wt_code(torch.arange(1, len(seq) + 1)).z for name, seq in
            WT.items()}


def removal_effect(lm, splice, z, feature: int, position: int) -> np.ndarray:
    """Δ_a = log p(a) − log p'(a) at a token position, p' from fair-esm with z_j w_dec_j σ taken out of h_ℓ."""
    seq, layer = splice.wt_seq, splice.layer
    code = splice.wt_code(torch.arange(1, len(seq) + 1))
    logp = torch.log_softmax(hooked_logits(lm, seq, layer, {}), -1)
    removed = splice.h[0, position] - z[position - 1, feature] * splice.sae.w_dec[feature] * code.sigma[position - 1, 0]
    logp_removed = torch.log_softmax(hooked_logits(lm, seq, layer, {position: removed}), -1)
    return np.array([float(logp[position, lm.token_index(a)] - logp_removed[position, lm.token_index(a)])
                     for a in AMINO_ACIDS])


def test_measured_output_effect_is_the_mean_over_the_positions_used(lm, saes, tiny_dir, tmp_path):
    """At layer 2 with max_positions 8, over the three WT sequences: a feature active at one position in all
    (mean = that Δ); one active at fewer than 8 positions in two proteins or more (the mean divides by the positions
    it has, pooled over proteins, not a mean of per-protein means); one active at more than 4 somewhere
    (capped at its 8 highest activations there); one never active (no row). Expected Δ from a hooked forward."""
    layer, max_positions = 2, 8
    z = wt_latents(lm, saes, layer)
    active = {name: (latents > 0).sum(0) for name, latents in z.items()}
    total = sum(active.values())
    per_protein = torch.stack(list(active.values()))
    single = int(torch.nonzero(total == 1)[0])
    under = int(torch.nonzero((per_protein.max(0).values < max_positions) & ((per_protein > 0).sum(0) >= 2))[0])
    capped = int(torch.nonzero(per_protein.max(0).values > max_positions)[0])
    never = int(torch.nonzero(total == 0)[0])
    features = sorted([single, under, capped, never])
    shown = pd.DataFrame({"layer": [layer] * 4 + [3], "feature": features + [single + 1], "ig_top20": 0,
                          "top_patch": 0, "universal": False, "circuits": 0, "card": False, "activations": "interprot"})
    shown.to_csv(tmp_path / "shown.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the never-active feature's 0/0 is dropped, not warned about
        measure_output_effects(max_positions, dict(WT), layer, K, FAIR_ESM, RUNTIME, tiny_dir / "esm2_tiny.pt",
                               tiny_dir / f"sae_l{layer}.safetensors", tmp_path / "shown.csv",
                               tmp_path / "effects.csv")
    table = read_table(tmp_path / "effects.csv", "output_effects")
    assert list(table.columns) == TABLES["output_effects"]
    assert table["feature"].tolist() == [f for f in features if f != never]
    assert table["layer"].tolist() == [layer] * 3 and table["k"].tolist() == [K] * 3
    assert table["d_sae"].tolist() == [saes[layer].info.d_sae] * 3
    for feature in (single, under, capped):
        deltas = []
        for name, seq in WT.items():
            values = z[name][:, feature]
            positions = [int(p) + 1 for p in torch.argsort(-values, stable=True)[:max_positions] if values[p] > 0]
            splice = Splice(lm, saes[layer], seq, layer)
            deltas += [removal_effect(lm, splice, z[name], feature, p) for p in positions]
        row = table.loc[table["feature"] == feature].iloc[0]
        assert row["n_positions"] == len(deltas)
        assert np.abs(row[list(AMINO_ACIDS)].to_numpy(dtype=float) - np.mean(deltas, axis=0)).max() <= 1e-5
    counts = dict(zip(table["feature"], table["n_positions"], strict=True))
    assert counts[single] == 1 and counts[under] == int(total[under]) < 3 * max_positions
    assert counts[capped] == int(torch.clamp(per_protein[:, capped], max=max_positions).sum())


def test_no_shown_feature_at_the_layer_writes_an_empty_table(tiny_dir, tmp_path):
    pd.DataFrame({"layer": [3], "feature": [0], "ig_top20": 0, "top_patch": 0, "universal": False, "circuits": 0,
                  "card": False, "activations": "interprot"}).to_csv(tmp_path / "shown.csv", index=False)
    measure_output_effects(DEFAULTS.features.max_positions, dict(WT), 2, K, FAIR_ESM, RUNTIME,
                           tiny_dir / "esm2_tiny.pt", tiny_dir / "sae_l2.safetensors", tmp_path / "shown.csv",
                           tmp_path / "effects.csv")
    table = read_table(tmp_path / "effects.csv", "output_effects")
    assert list(table.columns) == TABLES["output_effects"] and len(table) == 0


# -- the activity rule: reference FASTA bounds, its warning, and resume pieces ------------------------------


def test_reference_records_at_the_context_bar_and_the_skip_warning(tiny_dir, tmp_path, caplog):
    """Tokens with BOS and EOS may fill the model's 1,024 positions: 1,022 residues are kept, 1,023 skipped.
    With max_sequences 3: ok1, edge (1,022) and ok2 are used; long (1,023) and odd (X) are skipped, ok3 is
    past the bar. The warning says so, names them and says where reading stopped."""
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">ok1\nMKV\n>long\n" + "A" * 1023 + "\n>edge\n" + "L" * 1022
                     + "\n>odd\nMKXV\n>ok2\nWW\n>ok3\nAA\n")
    settings = dataclasses.replace(DEFAULTS.features.activity, reference=str(fasta))
    out, examples = tmp_path / "a.npz", tmp_path / "examples.csv"

    def warnings_of_a_run(max_sequences: int) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="esmsae"):
            characterize_features(dataclasses.replace(settings, max_sequences=max_sequences), dict(WT), 2, K,
                                  FAIR_ESM, RUNTIME, tiny_dir / "esm2_tiny.pt", tiny_dir / "sae_l2.safetensors",
                                  str(fasta), out, examples)
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    warnings = warnings_of_a_run(3)
    stats = Activity.read(out)
    assert stats.n_sequences == len(WT) + 3
    assert stats.n_positions == sum(map(len, WT.values())) + 3 + 1022 + 2
    assert warnings == [f"reference {fasta}: skipped 1 longer than the model's context and 1 with residues outside "
                        "the 20 (first: long, odd); stopped after 3 sequences"]
    # Only a skipped record, the whole file read: the warning without the stop.
    fasta.write_text(">ok1\nMKV\n>long\n" + "A" * 1023 + "\n")
    assert warnings_of_a_run(100) == [f"reference {fasta}: skipped 1 longer than the model's context and 0 with "
                                      "residues outside the 20 (first: long)"]
    # Nothing skipped, but reading stopped at max_sequences: the warning says so, with no names.
    fasta.write_text(">ok1\nMKV\n>ok2\nWW\n")
    assert warnings_of_a_run(1) == [f"reference {fasta}: skipped 0 longer than the model's context and 0 with "
                                    "residues outside the 20 (first: -); stopped after 1 sequences"]


class Killable:
    """A stand-in for one piece's function: counts its calls and, when armed to kill, raises at call
    `kill_at` (the job killed there)."""

    def __init__(self, real, kill_at: int):
        self.real, self.kill_at, self.calls, self.kill = real, kill_at, 0, False

    def arm(self, kill: bool) -> None:
        self.calls, self.kill = 0, kill

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.kill and self.calls == self.kill_at:
            raise RuntimeError("killed")
        return self.real(*args, **kwargs)


def other_model_files(folder):
    """Another tiny checkpoint and another SAE of the same shapes: an input change the resume key must see."""
    checkpoint, sae = folder / "other.pt", folder / "other_sae.safetensors"
    write_tiny_esm2(checkpoint, seed=2, **TINY)
    save_sae(random_sae(TINY["embed_dim"], D_SAE, K, seed=99), sae)
    return checkpoint, sae


@pytest.fixture
def tf32_restored():
    """The tf32 variants below set torch's global tf32 flags (esmsae.model.esm.set_precision): put them back."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.usefixtures("tf32_restored")
def test_activity_pieces_are_reused_only_for_the_same_settings_and_inputs(tiny_dir, tmp_path, monkeypatch):
    """One sequence per piece (3 WT + 1 reference record = 4 pieces). A run killed after its third piece
    leaves three pieces (each in its own slot) beside the output; a rerun with the same settings and inputs
    computes only the fourth, and any change of settings, WT sequences, layer, k, precision, checkpoint, SAE
    or reference file makes the rerun compute all 4. A finished run leaves no work folder."""
    monkeypatch.setattr(feature_activity_module, "ACTIVITY_CHUNK", 1)
    counted = Killable(feature_activity, kill_at=4)
    monkeypatch.setattr(feature_activity_module, "feature_activity", counted)
    other_checkpoint, other_sae = other_model_files(tmp_path)
    changed_wt = dict(WT) | {next(iter(WT)): "M" + next(iter(WT.values()))[1:]}  # same name, another sequence
    variants = {"same": {}, "settings": None, "wt": {"wt": changed_wt}, "layer": {"layer": 3}, "k": {"k": 4},
                "precision": {"precision": dataclasses.replace(FAIR_ESM, precision="tf32")},
                "checkpoint": {"checkpoint": other_checkpoint}, "sae": {"sae": other_sae}, "reference": None}

    def run(values, out):
        characterize_features(values["settings"], values["wt"], values["layer"], values["k"], values["precision"],
                              RUNTIME, values["checkpoint"], values["sae"], values["reference"], out,
                              out.parent / "examples.csv")

    for name, change in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        fasta = folder / "ref.fa"
        fasta.write_text(">r1\nMKVLA\n")
        args = {"settings": dataclasses.replace(DEFAULTS.features.activity, reference=str(fasta)), "wt": dict(WT),
                "layer": 2, "k": K, "precision": FAIR_ESM, "checkpoint": tiny_dir / "esm2_tiny.pt",
                "sae": tiny_dir / "sae_l2.safetensors", "reference": str(fasta)}
        out = folder / "activity.npz"
        counted.arm(kill=True)
        with pytest.raises(RuntimeError, match="killed"):
            run(args, out)
        assert (folder / "activity.npz.work").is_dir() and not out.exists()
        if name == "settings":
            change = {"settings": dataclasses.replace(args["settings"], max_sequences=10)}
        if name == "reference":
            fasta.write_text(">r1\nMKVLW\n")  # same path and record name, another sequence
            change = {}
        counted.arm(kill=False)
        run(args | change, out)
        assert counted.calls == (1 if name == "same" else 4), name
        assert out.exists() and not (folder / "activity.npz.work").exists()


# -- the Attributions file (its reading and writing; the IG tests cover what is in it) ------------------------


def test_attributions_of_hand_made_integer_arrays_are_float_and_optional_arrays_are_nan():
    """A result built by hand may hold integers and leave out quadrature_delta and every setting: the arrays
    come back float64, quadrature_delta NaN per mutant, the settings None."""
    result = Attributions.of({"mutant": ["A1C", "K2R"], "attribution": [[1, 0], [0, 2]],
                              "abs_delta": [[1, 0], [0, 1]], "error_attribution": [0, 1], "total_effect": [1, 3],
                              "completeness_error": [0, 0]}, "by hand")
    for name in ("attribution", "abs_delta", "error_attribution", "total_effect", "completeness_error",
                 "quadrature_delta"):
        assert getattr(result, name).dtype == np.float64, name
    assert result.attribution.tolist() == [[1.0, 0.0], [0.0, 2.0]] and result.total_effect.tolist() == [1.0, 3.0]
    assert np.isnan(result.quadrature_delta).all() and result.quadrature_delta.shape == (2,)
    assert all(getattr(result, key) is None for key in ("steps", "rule", "space", "k", "d_sae", "error_node", "layer"))
    assert result.mutant.tolist() == ["A1C", "K2R"] and result.n == 2


def test_attributions_file_holds_exactly_its_fields_and_names_a_missing_setting(tmp_path):
    """Mutant names held as Python objects are written as text (an object array would need pickling, which
    reading refuses); the file holds the fields and nothing else; writing without a setting says which."""
    result = Attributions(mutant=np.array(["V5H:D39R"], dtype=object), attribution=np.array([[0.5, -1.0]]),
                          abs_delta=np.array([[1.0, 2.0]]), error_attribution=np.array([0.25]),
                          total_effect=np.array([1.0]), completeness_error=np.array([0.0]),
                          quadrature_delta=np.array([0.125]), steps=8, rule="gauss", space="latent", k=4, d_sae=2,
                          error_node=True, layer=3, activations="fair-esm")
    result.write(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz", allow_pickle=False) as data:
        assert set(data.files) == {f.name for f in dataclasses.fields(Attributions)}
    back = Attributions.read(tmp_path / "r.npz")
    assert back.mutant.tolist() == ["V5H:D39R"] and back.attribution.tolist() == [[0.5, -1.0]]
    assert (back.steps, back.rule, back.space, back.k, back.d_sae, back.error_node, back.layer, back.activations) == (
        8, "gauss", "latent", 4, 2, True, 3, "fair-esm")
    with pytest.raises(ValueError, match=r"^Attributions.write: setting steps is not set$"):
        dataclasses.replace(result, steps=None).write(tmp_path / "s.npz")
    with pytest.raises(ValueError, match=r"^Attributions.write: setting activations is not set$"):
        dataclasses.replace(result, activations=None).write(tmp_path / "s.npz")
    # a file of an older version, without the forward: read back, it is refused rather than read as "no forward"
    with np.load(tmp_path / "r.npz", allow_pickle=False) as data:
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "activations"})
    with pytest.raises(InputError, match=r"old\.npz: IG results without the setting\(s\) activations; if an older "
                                         r"version of the pipeline wrote it, delete it so that its rule runs again$"):
        Attributions.read(tmp_path / "old.npz")


def test_output_effects_count_every_residue_and_no_special_token(lm, saes):
    """With max_positions above L, a feature's positions are all the residues (tokens 1..L) where it is active:
    the last residue included, BOS and EOS never, whatever the feature does there. Counts are integers."""
    seq = WT["PR40A_HUMAN"]
    splice = Splice(lm, saes[2], seq, 2)
    z = splice.wt_code(torch.arange(0, len(seq) + 2)).z  # BOS, the residues, EOS
    at_eos = int(torch.nonzero(z[len(seq) + 1] > 0).flatten()[0])
    at_last = int(torch.nonzero(z[len(seq)] > 0).flatten()[-1])
    total, count = output_effects(splice, [at_eos, at_last], max_positions=len(seq) + 2)
    assert count.dtype == np.int64
    assert count.tolist() == [int((z[1:len(seq) + 1, f] > 0).sum()) for f in (at_eos, at_last)]
    assert total.shape == (2, 20)


@pytest.mark.usefixtures("tf32_restored")
def test_output_effect_pieces_are_reused_only_for_the_same_settings_and_inputs(tiny_dir, tmp_path, monkeypatch):
    """One piece per protein (3). A run killed after its first protein leaves that piece; a rerun with the same
    settings and inputs measures the other 2, and any change of settings, WT sequences, layer, k, precision,
    shown features, checkpoint or SAE measures all 3. A finished run leaves no work folder."""
    counted = Killable(output_effects, kill_at=2)
    monkeypatch.setattr(output_effects_module, "output_effects", counted)
    other_checkpoint, other_sae = other_model_files(tmp_path)
    settings = dataclasses.replace(DEFAULTS.features, max_positions=1)
    args = {"settings": settings, "wt": dict(WT), "layer": 2, "k": K, "precision": FAIR_ESM,
            "checkpoint": tiny_dir / "esm2_tiny.pt", "sae": tiny_dir / "sae_l2.safetensors", "features": [0, 5]}
    variants = {"same": {}, "settings": {"settings": dataclasses.replace(settings, max_positions=2)},
                "wt": {"wt": dict(WT) | {next(iter(WT)): "M" + next(iter(WT.values()))[1:]}}, "layer": {"layer": 3},
                "k": {"k": 4}, "precision": {"precision": dataclasses.replace(FAIR_ESM, precision="tf32")},
                "features": {"features": [0, 6]},
                "checkpoint": {"checkpoint": other_checkpoint}, "sae": {"sae": other_sae}}

    def run(values, folder):
        pd.DataFrame({"layer": values["layer"], "feature": values["features"], "ig_top20": 0, "top_patch": 0,
                      "universal": False, "circuits": 0, "card": False, "activations": "interprot"}).to_csv(
            folder / "shown.csv", index=False)
        measure_output_effects(values["settings"].max_positions, values["wt"], values["layer"], values["k"],
                               values["precision"], RUNTIME, values["checkpoint"], values["sae"],
                               folder / "shown.csv", folder / "effects.csv")

    for name, change in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        counted.arm(kill=True)
        with pytest.raises(RuntimeError, match="killed"):
            run(args, folder)
        assert (folder / "effects.csv.work").is_dir() and not (folder / "effects.csv").exists()
        counted.arm(kill=False)
        run(args | change, folder)
        assert counted.calls == (2 if name == "same" else 3), name
        assert (folder / "effects.csv").exists() and not (folder / "effects.csv.work").exists()
