"""Concept labels and top-activating examples (METHOD.md "Concepts (biological labels)", "Top-activating examples"):
GFF parsing, the assay's own concept, the concept statistics by hand, a planted concept end to end, and the
examples against a brute-force sort."""

from __future__ import annotations

import dataclasses
import io
import urllib.error

import numpy as np
import pandas as pd
import pytest
import torch

from esmsae.analyses import feature_activity as activity_module
from esmsae.analyses.arrays import Activity
from esmsae.analyses.feature_activity import TopExamples, characterize_features, feature_activity
from esmsae.config.parse import load
from esmsae.inputs.annotations import DMS_SENSITIVE, dms_sensitive, download_gff, read_gff
from esmsae.model.sae import save_sae
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.errors import InputError
from esmsae.tables.concepts import ConceptSource, concept_statistics, tabulate_concepts, top_concepts
from esmsae.tables.labels import feature_table, label_features

from .conftest import DEFAULTS, FAIR_ESM, WT
from .planted import planted_detector

SEQ = WT["PR40A_HUMAN"]
HEADER = "##gff-version 3\n##sequence-region P12345 1 100\n"


def gff_line(kind: str, start: int, end: int, note: str = "") -> str:
    attributes = f"Note={note};ID=x" if note else "ID=x"
    return f"P12345\tUniProtKB\t{kind}\t{start}\t{end}\t.\t.\t.\t{attributes}\n"


# -- GFF3 ------------------------------------------------------------------------------------------------------------
def test_gff_types_notes_ranges_offsets_and_features_outside(tmp_path):
    path = tmp_path / "p.gff"
    path.write_text(HEADER + gff_line("Helix", 12, 14) + gff_line("Domain", 11, 20, "SAM%2C type 1")
                    + gff_line("Binding site", 25, 25, "ATP") + gff_line("Disulfide bond", 12, 18)
                    + gff_line("Region", 1, 5) + gff_line("Beta strand", 28, 40) + gff_line("Helix", 100, 120)
                    + "##FASTA\n>P12345\nMKV\n")
    concepts = read_gff(path, length=20, offset=10)  # WT residue i = UniProt residue i + 10
    assert concepts.positions == {
        "Helix": {2, 3, 4},
        "Domain": set(range(1, 11)), "Domain:SAM, type 1": set(range(1, 11)),
        "Binding site": {15}, "Binding site:ATP": {15},
        "Disulfide bond": {2, 8},            # the two bonded cysteines, not the residues between
        "Beta strand": {18, 19, 20},         # clipped at the WT's end
    }
    assert concepts.dropped == 2  # Region 1..5 and Helix 100..120 lie outside the WT sequence
    assert concepts.clipped == 1


@pytest.mark.parametrize(("line", "match"), [
    ("P12345\tUniProtKB\tHelix\t12\t14\t.\t.\t.\n", "line 3: a GFF3 feature line has 9 tab-separated columns, "
                                                     "this one has 8"),
    (gff_line("Helix", 12, 14).replace("\t12\t", "\tx\t"), r"line 3: start and end \('x', '14'\)"),
    (gff_line("Helix", 14, 12), "line 3: need a type and 1 <= start <= end"),
])
def test_a_malformed_gff_line_is_one_error_naming_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.gff"
    path.write_text(HEADER + line)
    with pytest.raises(InputError, match=match) as err:
        read_gff(path, 50)
    assert str(path) in str(err.value)


def test_a_missing_gff_names_the_config_key(tmp_path):
    with pytest.raises(InputError, match=r"annotation file not found \(config key proteins.<name>.annotations\)"):
        read_gff(tmp_path / "none.gff", 10)


def test_download_writes_the_file_or_says_which_accession_failed(tmp_path):
    class Answer(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    seen = []
    download_gff("P54764", tmp_path / "P54764.gff",
                 opener=lambda url, timeout: seen.append(url) or Answer(HEADER.encode()))
    assert seen == ["https://rest.uniprot.org/uniprotkb/P54764.gff"]
    assert (tmp_path / "P54764.gff").read_text() == HEADER

    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    with pytest.raises(InputError, match="'Q9Y2K2': cannot fetch .*set proteins.<name>.annotations"):
        download_gff("Q9Y2K2", tmp_path / "Q.gff", opener=offline)
    assert not (tmp_path / "Q.gff").exists()
    with pytest.raises(InputError, match="not a GFF3 file"):
        download_gff("P1", tmp_path / "P1.gff", opener=lambda url, timeout: Answer(b"<html>"))


def test_an_accession_alone_points_the_annotations_at_its_download():
    config = {"outdir": "o", "esm_checkpoint": "m", "sae": {"dir": "s", "pattern": "l{layer}", "k": 4},
              "proteins": {"P": {"wt_seq": "MKV", "uniprot": "P54764", "uniprot_offset": 3},
                           "Q": {"wt_seq": "MKV", "annotations": "mine.gff"}, "R": {"wt_seq": "MKV"}},
              "mutations": {"source": "model"}, "patching": {"layers": [1]}, "ig": {"layers": [1]}}
    proteins = load(config).proteins
    assert (proteins["P"].annotations, proteins["P"].uniprot_offset) == ("data/uniprot/P54764.gff", 3)
    assert proteins["Q"].annotations == "mine.gff" and proteins["R"].annotations is None


# -- the assay's own concept -----------------------------------------------------------------------------------------
def test_dms_sensitive_is_the_lowest_quartile_of_site_means_by_hand():
    """Site means −4, −2, 0, 1, 3 (sites 1..5): the 25th percentile is −2 exactly, so sites 1 and 2 (on the bar)."""
    rows = [("A1C", 1, -5.0), ("A1D", 1, -3.0), ("A2C", 2, -2.0), ("A3C", 3, 0.0), ("A4C", 4, 1.0),
            ("A5C", 5, 3.0), ("A5D", 5, np.nan), ("A1C:A3C", "1:3", -10.0), ("A6C", 6, np.nan)]
    scores = pd.DataFrame(rows, columns=["mutant", "position", "dms_score"])
    assert dms_sensitive(scores) == {1, 2}  # the double and the sites without DMS do not count
    assert dms_sensitive(scores.assign(dms_score=np.nan)) == set()


# -- the statistics, by hand -------------------------------------------------------------------------------------------
def activity_with(latents: dict[str, np.ndarray], layer: int = 2) -> Activity:
    d_sae = next(iter(latents.values())).shape[1]
    zeros = np.zeros(d_sae, dtype=np.int64)
    return Activity(layer=layer, k=2, d_sae=d_sae, activations="fair-esm", n_sequences=len(latents), n_positions=1,
                    residue_counts=np.ones(20, dtype=np.int64), n_active=zeros, active_by_residue=np.zeros((d_sae, 20),
                                                                                                           np.int64),
                    activation_by_residue=np.zeros((d_sae, 20)), max_activation=np.zeros(d_sae), wt_latents=latents)


def test_concept_statistics_by_hand():
    """P (6 residues): feature 0 active at 2, 3, 5; feature 1 at 6. Q (4 residues): feature 0 at 1.
    Helix = P {2, 3, 4} ∪ Q {1, 2} (UniProt, both proteins annotated); dms_sensitive = P {5, 6} (only P has DMS).
    Feature 0 on Helix: hits 3 (P 2, 3; Q 1), n_active 4 (over P and Q), |c| 5: P 3/4, R 3/5, F1 6/9.
    Feature 0 on dms_sensitive: over P only: hits 1, n_active 3, |c| 2: F1 2/5. Feature 1: dms hits 1 of 1, F1 2/3."""
    p, q = np.zeros((6, 3)), np.zeros((4, 3))
    p[[1, 2, 4], 0] = 1.0
    p[5, 1] = 2.0
    q[0, 0] = 0.5
    sources = [ConceptSource("P", "uniprot", {"Helix": {2, 3, 4}}), ConceptSource("Q", "uniprot", {"Helix": {1, 2}}),
               ConceptSource("P", "dms", {DMS_SENSITIVE: {5, 6}})]
    table = concept_statistics(activity_with({"P": p, "Q": q}), sources).set_index(["feature", "concept"])
    assert list(concept_statistics(activity_with({"P": p, "Q": q}), sources).columns) == TABLES["feature_concepts"]
    assert table[["k", "d_sae", "activations"]].drop_duplicates().values.tolist() == [[2, 3, "fair-esm"]]
    row = table.loc[(0, "Helix")]
    assert (row["hits"], row["n_active"], row["n_concept"]) == (3, 4, 5)
    assert (row["precision"], row["recall"], row["f1"]) == (3 / 4, 3 / 5, 6 / 9)
    row = table.loc[(0, DMS_SENSITIVE)]
    assert (row["hits"], row["n_active"], row["n_concept"], row["f1"]) == (1, 3, 2, 2 / 5)
    assert table.loc[(1, DMS_SENSITIVE), "f1"] == 2 / 3
    assert (1, "Helix") not in table.index and 2 not in table.index.get_level_values(0)  # no hit, no row


def test_top_concept_ties_go_alphabetical_and_the_label_gains_it_at_the_bar():
    concepts = pd.DataFrame({"layer": 2, "feature": [0, 0, 0, 1], "concept": ["Turn", "Helix", "Domain", "Helix"],
                             "n_concept": 4, "n_active": 4, "hits": 2, "precision": 0.5, "recall": 0.5,
                             "f1": [0.5, 0.5, 0.25, 0.375], "k": 2, "d_sae": 3, "activations": "fair-esm"})
    names, f1 = top_concepts(concepts, 2, 3)
    assert names == ["Helix", "Helix", ""] and f1[0] == 0.5 and np.isnan(f1[2])
    latents = {"P": np.zeros((4, 3))}
    act = dataclasses.replace(activity_with(latents), n_active=np.array([4, 4, 0]),
                              active_by_residue=np.array([[4] + [0] * 19, [0, 4] + [0] * 18, [0] * 20]),
                              residue_counts=np.full(20, 4), n_positions=80)
    table = feature_table(act, 0.8, None, concepts, concept_f1=0.5)
    assert table.loc[0, "label"].endswith("; Helix (F1 0.50)")       # F1 0.5 on the bar 0.5: gains it
    assert "Helix" not in table.loc[1, "label"] and table.loc[1, "top_concept"] == "Helix"  # 0.375 < 0.5
    assert list(table.columns) == TABLES["feature_labels"]


def test_a_planted_concept_gets_f1_one_and_appears_in_the_label(lm, tiny_dir, tmp_path):
    """A planted L detector at layer 1 and a GFF whose features cover exactly PR40A's L positions, end to end
    through the rules' own code: F1 = 1, and the label names the concept."""
    sae_path = tmp_path / "sae_l1.safetensors"
    save_sae(planted_detector(lm, 1, "L", list(WT.values())), sae_path)
    characterize_features(DEFAULTS.features.activity, dict(WT), 1, 4, FAIR_ESM, DEFAULTS.runtime,
                          tiny_dir / "esm2_tiny.pt", sae_path, None, tmp_path / "a.npz", tmp_path / "ex.csv")
    gff = tmp_path / "PR40A.gff"
    leucines = [i + 1 for i, c in enumerate(SEQ) if c == "L"]
    gff.write_text(HEADER + "".join(gff_line("Site", i + 5, i + 5, "leucine") for i in leucines))  # offset 5
    tabulate_concepts({1: tmp_path / "a.npz"}, {"PR40A_HUMAN": {"length": len(SEQ), "offset": 5}},
                      {"PR40A_HUMAN": gff}, {}, tmp_path / "concepts.csv")
    concepts = read_table(tmp_path / "concepts.csv", "feature_concepts")
    planted = concepts[concepts["feature"] == 3].set_index("concept")
    assert planted.loc["Site:leucine", "f1"] == 1.0 and planted.loc["Site", "f1"] == 1.0
    pd.DataFrame(columns=TABLES["output_effects"]).to_csv(tmp_path / "effects.csv", index=False)
    label_features({1: tmp_path / "a.npz"}, {1: tmp_path / "effects.csv"}, 0.8, tmp_path / "labels.csv",
                   tmp_path / "concepts.csv", 0.5)
    labels = read_table(tmp_path / "labels.csv", "feature_labels").set_index("feature")
    assert labels.loc[3, "top_concept"] == "Site" and labels.loc[3, "label"] == "L-identity; Site (F1 1.00)"


# -- top-activating examples -------------------------------------------------------------------------------------------
def brute_force(lm, sae, layer: int, records: list[tuple[str, str]], n: int, width: int) -> pd.DataFrame:
    """Every reference position's z, then per feature a sort by (−z, record order, position)."""
    rows = []
    with torch.no_grad():
        for ordinal, (name, seq) in enumerate(records):
            _, z, _, _ = sae.encode(lm.hidden(lm.tokenize([seq]), layer)[0, 1:-1])
            for p in range(len(seq)):
                for j in np.flatnonzero(z[p].numpy() > 0):
                    rows.append((int(j), -float(z[p, j]), ordinal, p + 1, name, seq))
    rows.sort()
    out, count = [], {}
    for j, neg, _ordinal, p, name, seq in rows:
        count[j] = count.get(j, 0) + 1
        if count[j] <= n:
            lo, hi = max(1, p - width), min(len(seq), p + width)
            out.append({"feature": j, "rank": count[j], "record": name, "position": p, "activation": -neg,
                        "window": seq[lo - 1:hi], "window_start": lo})
    return pd.DataFrame(out)


def test_examples_equal_a_brute_force_sort_and_break_ties_by_record_then_position(lm, saes, monkeypatch):
    """WT sequences and a reference with exact duplicates (equal activations: the earlier record wins), run
    in small encode chunks and two resume-sized pieces so that merges happen."""
    rng = np.random.default_rng(4)
    extra = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 20 + i)) for i in range(5)]
    records = list(WT.items()) + [(f"r{i}", s) for i, s in enumerate(extra)] + [("dup0", extra[0]), ("dup1", SEQ)]
    monkeypatch.setattr(activity_module, "ENCODE_ROWS", 64)
    layer, n, width = 2, 3, 4
    first = feature_activity(lm, saes[layer], layer, records[:5], list(WT), buffer=3,
                             examples=TopExamples.empty(saes[layer].info.d_sae, n, width))[1]
    second = feature_activity(lm, saes[layer], layer, records[5:], list(WT), buffer=3, first_ordinal=5,
                              examples=TopExamples.empty(saes[layer].info.d_sae, n, width))[1]
    got = first.merge(second).table(layer, 8, "interprot")
    expected = brute_force(lm, saes[layer], layer, records, n, width)
    assert list(got.columns) == TABLES["feature_examples"]
    assert got[["k", "d_sae", "activations"]].drop_duplicates().values.tolist() == [[8, saes[layer].info.d_sae,
                                                                                     "interprot"]]
    assert len(got) == len(expected)
    for column in ("feature", "rank", "record", "position", "window", "window_start"):
        assert got[column].tolist() == expected[column].tolist(), column
    np.testing.assert_allclose(got["activation"], expected["activation"], rtol=1e-6)
    assert "dup0" not in set(got["record"]) or (got["record"] == "r0").any()  # a tie goes to the earlier record
    centre = got.apply(lambda r: float(r.window_activations.split(";")[r.position - r.window_start]), axis=1)
    np.testing.assert_allclose(centre, got["activation"], rtol=1e-3)


def test_examples_of_the_whole_rule_match_the_activity_pass(lm, tiny_dir, tmp_path):
    characterize_features(dataclasses.replace(DEFAULTS.features.activity, n_examples=2), dict(WT), 2, 8, FAIR_ESM,
                          DEFAULTS.runtime, tiny_dir / "esm2_tiny.pt", tiny_dir / "sae_l2.safetensors", None,
                          tmp_path / "a.npz", tmp_path / "ex.csv")
    examples = read_table(tmp_path / "ex.csv", "feature_examples")
    activity = Activity.read(tmp_path / "a.npz")
    firsts = examples[examples["rank"] == 1].set_index("feature")["activation"]
    np.testing.assert_allclose(firsts, activity.max_activation[firsts.index], rtol=1e-6)
    assert set(firsts.index) == set(np.flatnonzero(activity.n_active > 0))
    assert examples.groupby("feature")["rank"].max().max() <= 2
    assert activity.activations == "fair-esm" and (examples["activations"] == "fair-esm").all()
    assert (examples["k"] == 8).all() and (examples["d_sae"] == activity.d_sae).all()


def test_equal_activations_go_to_the_earlier_record_before_the_earlier_position():
    """Hand-made latents: feature 0 has 0.5 at record 0's position 5 and at record 1's position 2, and 0.9 at
    record 1's position 4; n = 2 keeps 0.9, then the tie's earlier record (0), not the earlier position (2).
    Feature 1's tie is within one record: the earlier position wins."""
    batch = [(1, "b", "MKVLA"), (0, "a", "MKVLAGG")]  # a batch in length order, not stream order
    z = torch.zeros(12, 2)
    z[0 + 1, 0], z[0 + 3, 0] = 0.5, 0.9        # record b (ordinal 1): positions 2 and 4
    z[5 + 4, 0] = 0.5                          # record a (ordinal 0): position 5
    z[5 + 6, 1], z[5 + 2, 1] = 0.7, 0.7        # record a: positions 7 and 3 tie
    best = TopExamples.empty(2, 2, 1).offer(z, batch, [(0, 0), (1, 5)])
    table = best.table(2, 1, "interprot").set_index(["feature", "rank"])
    assert (table.loc[(0, 1), "record"], table.loc[(0, 1), "position"]) == ("b", 4)
    assert (table.loc[(0, 2), "record"], table.loc[(0, 2), "position"]) == ("a", 5)
    assert table.loc[(1, 1), "position"] == 3 and table.loc[(1, 2), "position"] == 7
    assert (table.loc[(0, 2), "window"], table.loc[(0, 2), "window_start"]) == ("LAG", 4)
    assert table.loc[(0, 2), "window_activations"] == "0;0.5;0"
    # merged later: an equal value from a later record does not displace it
    later = TopExamples.empty(2, 2, 1).offer(torch.tensor([[0.5, 0.0]] * 3), [(2, "c", "MKV")], [(0, 0)])
    merged = best.merge(later).table(2, 1, "interprot").set_index(["feature", "rank"])
    assert merged.loc[(0, 2), "record"] == "a"
