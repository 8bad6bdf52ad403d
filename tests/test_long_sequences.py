"""Sequences longer than ESM-2's context (METHOD.md "Long sequences"): each mutant on the 1,024-token slice
ProteinGym's ``get_optimal_window`` chooses, every number on that slice's WT forward, positions in the
whole sequence's numbering."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses.api import analyse
from esmsae.analyses.job import splices
from esmsae.analyses.patching import patch_protein
from esmsae.analyses.positions import POSITIONS, spread_tables
from esmsae.analyses.scoring import scores_table
from esmsae.config.settings import LayerJob, Runtime, SelectionSettings
from esmsae.inputs.mutations import AMINO_ACIDS, mutant_window, optimal_window, parse_mutant, within_context
from esmsae.model.splice import Splice

from .conftest import DEFAULTS, FAIR_ESM, LAYERS, patch_settings
from .reference import hooked_logits, interprot_forward

LONG = "".join(np.random.default_rng(1500).choice(list(AMINO_ACIDS), 1500))  # 1,502 tokens


# ProteinGym's get_optimal_window(mutation_position_relative, seq_len_wo_special, model_window), worked out
# by hand: (token, number of tokens, window) -> slice.
@pytest.mark.parametrize(("token", "n_tokens", "window", "expected"), [
    (5, 300, 1024, (0, 300)),          # fits: the whole sequence
    (1023, 1024, 1024, (0, 1024)),     # exactly fits
    (10, 1502, 1024, (0, 1024)),       # start: keeps BOS
    (511, 1502, 1024, (0, 1024)),      # last token below half the window
    (512, 1502, 1024, (0, 1024)),      # centred: 512 - 512 = 0
    (513, 1502, 1024, (1, 1025)),      # first slice without BOS
    (750, 1502, 1024, (238, 1262)),    # middle: neither BOS nor EOS
    (989, 1502, 1024, (477, 1501)),    # last centred one: ends one short of EOS
    (990, 1502, 1024, (478, 1502)),    # end: keeps EOS
    (1501, 1502, 1024, (478, 1502)),   # EOS itself
    (3, 20, 8, (0, 8)), (4, 20, 8, (0, 8)), (5, 20, 8, (1, 9)), (15, 20, 8, (11, 19)), (16, 20, 8, (12, 20)),
])
def test_optimal_window_matches_proteingym(token, n_tokens, window, expected):
    assert optimal_window(token, n_tokens, window) == expected
    start, end = expected
    assert end - start == min(window, n_tokens) and start <= token < end


@pytest.mark.parametrize(("name", "expected"), [
    ("A5", (0, 1024)), ("A750", (238, 1262)), ("A1500", (478, 1502)),
    ("A700:A800", (238, 1262)),     # centred on the middle of its sites, (700 + 800) // 2 = 750
    ("A100:A1000", (38, 1062)),     # middle 550; both sites inside
    ("A10:A1400", None),            # further apart than the window: no slice
    ("A1:A1023", (0, 1024)),        # middle 512: both ends just inside
    ("A1:A1024", None),             # middle 512: residue 1024 is token 1024, one past the slice
])
def test_mutant_window_centres_on_the_middle_of_its_sites(name, expected):
    seq = "A" * 1500
    name = ":".join(part + "G" for part in name.split(":"))
    assert mutant_window(parse_mutant(name, seq), len(seq)) == expected


def test_within_context_keeps_what_fits_and_says_what_it_left(caplog):
    with caplog.at_level(logging.WARNING, logger="esmsae"):
        kept = within_context({"short": "M" * 1022, "long": "M" * 1023}, "feature activity")
    assert kept == {"short": "M" * 1022}
    assert "feature activity: 1 protein(s) longer than the model's context of 1024 tokens left out: long (1023" \
        in caplog.text


def write_assay(path, seq: str, names: list[str]) -> str:
    def mutated(name):
        out = list(seq)
        for site in name.split(":"):
            out[int(site[1:-1]) - 1] = site[-1]
        return "".join(out)
    pd.DataFrame({"mutant": names, "mutated_sequence": [mutated(n) for n in names],
                  "DMS_score": np.linspace(-2, 1, len(names)), "DMS_score_bin": 0}).to_csv(path, index=False)
    return str(path)


def site(seq: str, pos: int, new: str) -> str:
    return f"{seq[pos - 1]}{pos}{new if new != seq[pos - 1] else 'W' if seq[pos - 1] != 'W' else 'A'}"


NAMES = [site(LONG, 5, "D"), site(LONG, 750, "P"), site(LONG, 751, "G"), site(LONG, 1495, "K"),
         f"{site(LONG, 700, 'E')}:{site(LONG, 800, 'R')}", f"{site(LONG, 10, 'A')}:{site(LONG, 1400, 'C')}"]
WINDOWS = {NAMES[0]: (0, 1024), NAMES[1]: (238, 1262), NAMES[2]: (239, 1263), NAMES[3]: (478, 1502),
           NAMES[4]: (238, 1262)}


def hand_score(logits: torch.Tensor, lm, mutant, start: int) -> float:
    logp = torch.log_softmax(logits.float(), -1)
    return sum(float(logp[s.pos - start, lm.token_index(s.mut)] - logp[s.pos - start, lm.token_index(s.wt)])
               for s in mutant.sites)


@pytest.fixture(scope="module")
def long_scores(lm, tmp_path_factory):
    path = write_assay(tmp_path_factory.mktemp("long") / "LONG.csv", LONG, NAMES)
    return scores_table(lm, "LONG", LONG, path, SelectionSettings(source="dms", max_dms=None, n=10, seed=0,
                                                                  multi=True))


def test_scores_on_each_mutants_slice_on_both_forwards(lm, long_scores, caplog):
    table = long_scores.set_index("mutant")
    assert list(table.index) == NAMES[:5]  # the sites 10 and 1400 lie further apart than a slice
    for name, (start, end) in WINDOWS.items():
        assert (table.loc[name, "window_start"], table.loc[name, "window_end"]) == (start, end)
        mutant = parse_mutant(name, LONG)
        fair = hooked_logits(lm, LONG, 1, {}, window=(start, end))
        inter = interprot_forward(lm.model, lm.tokenize([LONG])[:, start:end])[1][0]
        assert table.loc[name, "wt_marginal_fair_esm"] == pytest.approx(hand_score(fair, lm, mutant, start), abs=1e-5)
        assert table.loc[name, "wt_marginal_interprot"] == pytest.approx(hand_score(inter, lm, mutant, start),
                                                                         abs=1e-5)
    assert (table["wt_marginal"] == table["wt_marginal_fair_esm"]).all()
    assert table.loc[NAMES[0], "position"] == "5" and table.loc[NAMES[4], "position"] == "700:800"


def test_a_short_sequence_records_its_whole_token_range(lm, tmp_path):
    seq = LONG[:200]
    path = write_assay(tmp_path / "SHORT.csv", seq, [site(seq, 5, "D"), site(seq, 150, "P")])
    table = scores_table(lm, "SHORT", seq, path, SelectionSettings(source="dms", max_dms=None, n=10, seed=0,
                                                                   multi=False))
    assert (table["window_start"] == 0).all() and (table["window_end"] == 202).all()


def test_skipped_mutants_are_logged(lm, tmp_path, caplog):
    path = write_assay(tmp_path / "LONG.csv", LONG, NAMES)
    with caplog.at_level(logging.WARNING, logger="esmsae"):
        scores_table(lm, "LONG", LONG, path, SelectionSettings(source="dms", max_dms=None, n=10, seed=0, multi=True))
    assert f"LONG: 1 mutants skipped, their sites further apart than the model's window of 1024 tokens " \
        f"(first: {NAMES[5]})" in caplog.text


@pytest.fixture(scope="module")
def long_engines(lm, saes, long_scores):
    mutants = [parse_mutant(name, LONG) for name in long_scores["mutant"]]
    runtime = Runtime(device="cpu", batch_size=None, trust_pickle=False)
    out = {}
    for layer in LAYERS:
        job = LayerJob(protein="LONG", wt_seq=LONG, layer=layer, k=saes[layer].k, forward=FAIR_ESM)
        out[layer] = splices(lm, saes[layer], job, runtime, mutants)
    return mutants, out


@pytest.mark.parametrize("layer", LAYERS)
def test_each_slices_splice_is_exact(lm, long_engines, long_scores, layer):
    """On every slice, at every layer: the splice without intervention is the model's own forward on the
    slice, a no-op patch moves the score by exactly 0.00, and the baseline is the scores table's."""
    mutants, engines = long_engines
    by_name = engines[layer]
    assert by_name[NAMES[1]] is by_name[NAMES[4]]  # one slice, one WT forward
    assert len({id(s) for s in by_name.values()}) == 4
    for mutant in mutants:
        splice = by_name[mutant.name]
        assert splice.window == WINDOWS[mutant.name] and splice.offset == WINDOWS[mutant.name][0]
        code = splice.wt_code(torch.arange(splice.h.shape[1]))
        rebuilt = splice.sae.decode(code.z, code.mu, code.sigma) + code.error
        with torch.no_grad():
            logits = lm.head(rebuilt.unsqueeze(0), layer)[0]
        reference = hooked_logits(lm, LONG, layer, {}, window=splice.window)
        assert (logits - reference).abs().max() <= 1e-5
        tokens = [splice.token(s.pos) for s in mutant.sites]
        site_code = splice.wt_code(tokens)
        noop = site_code.z.expand(3, -1, -1).clone()
        out = splice.effects(site_code, noop, splice.score_spec(mutant))
        assert torch.equal(out.effects, torch.zeros(3))
        expected = long_scores.set_index("mutant").loc[mutant.name, "wt_marginal"]
        assert float(out.baseline[0]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("layer", [1, LAYERS[-1]])
def test_patches_on_a_slice_equal_a_hooked_forward_of_the_slice(lm, long_engines, layer):
    mutants, engines = long_engines
    mutant = mutants[1]  # residue 750, slice (238, 1262)
    splice = engines[layer][mutant.name]
    table = patch_protein(splice, [mutant], patch_settings())
    assert (table["position"] == "750").all()
    token = splice.token(750)
    assert token == 750 - 238
    wt = splice.wt_code([token])
    base = hand_score(hooked_logits(lm, LONG, layer, {}, window=splice.window), lm, mutant, 238)
    rows = table[table["control"].isin(["real", "random"])].head(4)
    assert len(rows) > 0
    for row in rows.itertuples():
        z = wt.z[0].clone()
        z[row.feature] = row.patched_value
        vec = splice.sae.decode(z, wt.mu[0], wt.sigma[0]) + wt.error[0]
        ref = hand_score(hooked_logits(lm, LONG, layer, {token: vec}, window=splice.window), lm, mutant, 238) - base
        assert abs(row.effect - ref) <= 1e-5
    assert (table.loc[table["control"] == "noop", "effect"] == 0.0).all()


def test_position_spread_reports_the_whole_sequences_numbering(lm, saes, long_engines):
    """Slices short enough for the O(T²) spread to be quick: the bookkeeping is the same as on 1,024 tokens."""
    mutants, _ = long_engines
    chosen = {mutants[0].name: Splice(lm, saes[1], LONG, 1, window=(0, 40)),        # residue 5, keeps BOS
              mutants[3].name: Splice(lm, saes[1], LONG, 1, window=(1470, 1502))}  # residue 1495, keeps EOS
    results = analyse(POSITIONS, chosen, [mutants[0], mutants[3]], DEFAULTS.positions)
    rows, summary = spread_tables(results, LONG, 1, "interprot")
    residues = ["<cls>", *LONG, "<eos>"]
    for name, (start, end) in zip(chosen, [(0, 40), (1470, 1502)], strict=True):
        mine = rows[rows["mutant"] == name]
        assert mine["position"].tolist() == list(range(start, end))
        assert mine["residue"].tolist() == residues[start:end]
    at_site = rows[(rows["mutant"] == mutants[3].name) & (rows["position"] == 1495)]
    assert at_site["residue"].item() == LONG[1494]
    for result in results:
        assert result.site_effect == pytest.approx(
            float(rows[(rows["mutant"] == result.mutant)
                       & rows["position"].isin([s.pos for s in parse_mutant(result.mutant, LONG).sites])]
                  ["effect"].sum()), abs=1e-12)


def test_a_whole_protein_analysis_refuses_slices(lm, saes):
    splice = Splice(lm, saes[1], LONG, 1, window=(238, 1262))
    with pytest.raises(ValueError, match="windowed splice has no whole-sequence residue code"):
        splice.residue_code()
    with pytest.raises(ValueError, match=r"residue 1300 lies outside the window \(238, 1262\)"):
        splice.token(1300)
