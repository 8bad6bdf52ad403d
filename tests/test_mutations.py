"""Tests for esmsae.inputs.mutations: mutant parsing, assay reading and mutation selection."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from esmsae.inputs.mutations import (
    AMINO_ACIDS,
    Mutant,
    Site,
    all_single_mutants,
    check_wt_sequence,
    parse_mutant,
    read_assay,
    select_from_assay,
    select_lowest,
)
from esmsae.pipeline.errors import InputError

WT = "MKVLAGDEWR"  # 10 residues: M1 K2 V3 L4 A5 G6 D7 E8 W9 R10

PROTEINGYM = Path(__file__).resolve().parents[2] / "shared/data/proteingym"
REAL_ASSAYS = {
    # DMS_id: (number of single-site rows in the file, per the data README)
    "EPHB2_HUMAN_Tsuboyama_2023_1F0M": 1239,
    "DNJA1_HUMAN_Tsuboyama_2023_2LO1": 1216,
    "PR40A_HUMAN_Tsuboyama_2023_1UZC": 1163,
}
needs_proteingym = pytest.mark.skipif(
    not PROTEINGYM.exists(),
    reason=f"ProteinGym reference files not found at {PROTEINGYM} (the shared data folder beside the repo)",
)


def write_assay(
    path: Path, rows: list[tuple[str, str, str]], header: str = "mutant,mutated_sequence,DMS_score"
) -> Path:
    """Write a small assay CSV: rows of (mutant, mutated_sequence, DMS_score) text."""
    lines = [header] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def mutate(seq: str, *changes: tuple[int, str]) -> str:
    residues = list(seq)
    for pos, mut in changes:
        residues[pos - 1] = mut
    return "".join(residues)


# ---------------------------------------------------------------- parsing

def test_amino_acids_are_the_20_canonical_in_order():
    assert AMINO_ACIDS == "ACDEFGHIKLMNPQRSTVWY"


def test_parse_single_and_apply():
    m = parse_mutant("V3H", WT)
    assert m == Mutant(name="V3H", sites=(Site(wt="V", pos=3, mut="H"),))
    assert m.n_sites == 1
    assert m.apply(WT) == "MKHLAGDEWR"


def test_parse_multi_keeps_order_and_applies_all_sites():
    m = parse_mutant("W9A:K2P", WT)
    assert m.name == "W9A:K2P"
    assert m.sites == (Site("W", 9, "A"), Site("K", 2, "P"))
    assert m.n_sites == 2
    assert m.apply(WT) == "MPVLAGDEAR"


def test_parse_canonicalises_leading_zeros():
    assert parse_mutant("V03H", WT).name == "V3H"


def test_apply_refuses_a_sequence_that_does_not_fit():
    m = parse_mutant("V3H", WT)
    with pytest.raises(InputError, match=r"'V3H'.*has 'A' at position 3"):
        m.apply("MKAL")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("V3", r"site 'V3' is malformed"),
        ("3H", r"site '3H' is malformed"),
        ("v3h", r"site 'v3h' is malformed"),
        ("V3H:", r"site '' is malformed"),
        ("V3*", r"site 'V3\*' is malformed"),
        ("", r"empty"),
        ("V3X", r"mutant residue 'X'.*not one of the 20 canonical"),
        ("B3H", r"WT residue 'B'.*not one of the 20 canonical"),
        ("M0A", r"position 0, outside the WT sequence \(1\.\.10\)"),
        ("R11A", r"position 11, outside the WT sequence \(1\.\.10\)"),
        ("A3H", r"says WT residue 'A' at position 3, but the WT sequence has 'V' there"),
        ("V3V", r"site 'V3V' is synonymous"),
        ("V3H:V3A", r"position 3 appears more than once"),
    ],
)
def test_parse_errors_name_where_and_problem(text, problem):
    where = f"assay.csv, row 7 ({text!r})"
    with pytest.raises(InputError, match=problem) as info:
        parse_mutant(text, WT, where=where)
    assert str(info.value).startswith(where + ": ")
    assert "\n" not in str(info.value)


def test_parse_error_without_where_names_the_text():
    with pytest.raises(InputError, match=r"^mutant 'A3H': .*has 'V' there"):
        parse_mutant("A3H", WT)


def test_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_mutant("V3V", WT)


# ---------------------------------------------------------------- WT sequence

def test_check_wt_sequence_normalises():
    assert check_wt_sequence("  mkvlagdewr\n", "proteins.X.wt_seq") == WT


@pytest.mark.parametrize(
    ("seq", "problem"),
    [
        ("", r"is empty"),
        ("   ", r"is empty"),
        ("MKVXL", r"has 'X' at position 4"),
        ("MK VL", r"has ' ' at position 3"),
    ],
)
def test_check_wt_sequence_errors(seq, problem):
    with pytest.raises(InputError, match=r"^proteins\.EPHB2_HUMAN\.wt_seq: .*" + problem):
        check_wt_sequence(seq, "proteins.EPHB2_HUMAN.wt_seq")


# ---------------------------------------------------------------- in-silico singles

def test_all_single_mutants_count_and_order():
    singles = all_single_mutants(WT)
    assert len(singles) == 19 * len(WT)
    assert len({m.name for m in singles}) == 19 * len(WT)
    assert [m.name for m in singles[:3]] == ["M1A", "M1C", "M1D"]
    assert [m.name for m in singles[17:20]] == ["M1W", "M1Y", "K2A"]  # M skipped at position 1
    assert singles[-1].name == "R10Y"
    positions = [m.sites[0].pos for m in singles]
    assert positions == sorted(positions)
    for m in singles[:19]:
        assert m.sites[0].wt == "M" and m.sites[0].mut != "M"
    assert [m.sites[0].mut for m in singles[19:38]] == [a for a in AMINO_ACIDS if a != "K"]
    # each is exactly what parse_mutant gives
    assert all(parse_mutant(m.name, WT) == m for m in singles)


# ---------------------------------------------------------------- read_assay

def good_rows() -> list[tuple[str, str, str]]:
    return [
        ("V3H", mutate(WT, (3, "H")), "-1.5"),
        ("K2P:W9A", mutate(WT, (2, "P"), (9, "A")), "-2.25"),
        ("R10G", mutate(WT, (10, "G")), "0.75"),
    ]


def test_read_assay_drops_multi_by_default(tmp_path, caplog):
    path = write_assay(tmp_path / "a.csv", good_rows())
    with caplog.at_level(logging.INFO, logger="esmsae.inputs.mutations"):
        frame = read_assay(path, WT)
    assert list(frame["mutant"]) == ["V3H", "R10G"]
    assert list(frame["n_sites"]) == [1, 1]
    assert list(frame["dms_score"]) == [-1.5, 0.75]
    assert list(frame["row"]) == [1, 3]
    assert frame["parsed"].iloc[0] == parse_mutant("V3H", WT)
    assert frame["dms_score"].dtype == float
    assert "3 rows read, 2 kept, 1 dropped (multi-site" in caplog.text


def test_read_assay_keeps_multi_when_asked(tmp_path):
    path = write_assay(tmp_path / "a.csv", good_rows())
    frame = read_assay(path, WT, multi=True)
    assert list(frame["mutant"]) == ["V3H", "K2P:W9A", "R10G"]
    assert list(frame["n_sites"]) == [1, 2, 1]
    assert frame["parsed"].iloc[1].apply(WT) == mutate(WT, (2, "P"), (9, "A"))


def test_read_assay_ignores_score_bin_and_extra_columns(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(
        "mutant,mutated_sequence,DMS_score,DMS_score_bin,note\n"
        f"V3H,{mutate(WT, (3, 'H'))},-1.0,0,x\n"
    )
    frame = read_assay(path, WT)
    assert list(frame.columns) == ["mutant", "n_sites", "dms_score", "parsed", "row"]
    assert frame["dms_score"].tolist() == [-1.0]


def test_read_assay_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(InputError, match=r"nope\.csv: assay file not found"):
        read_assay(path, WT)


def test_read_assay_missing_columns(tmp_path):
    path = write_assay(tmp_path / "a.csv", [("V3H", "-1.0")], header="mutant,score")
    with pytest.raises(InputError, match=r"a\.csv: missing required column\(s\) mutated_sequence, DMS_score"):
        read_assay(path, WT)


def test_read_assay_bad_mutant_names_file_and_row(tmp_path):
    rows = good_rows() + [("A4G", mutate(WT, (4, "G")), "0.1")]
    path = write_assay(tmp_path / "a.csv", rows)
    with pytest.raises(InputError, match=r"a\.csv, row 4 \('A4G'\): .*has 'L' there"):
        read_assay(path, WT)


def test_read_assay_mismatched_mutated_sequence(tmp_path):
    rows = good_rows()
    rows[2] = ("R10G", mutate(WT, (10, "A")), "0.75")
    path = write_assay(tmp_path / "a.csv", rows)
    with pytest.raises(
        InputError,
        match=r"a\.csv, row 3 \('R10G'\): mutated_sequence is not the WT sequence with this mutant applied "
        r"\(first difference at position 10: file has 'A', expected 'G'\)",
    ):
        read_assay(path, WT)


def test_read_assay_mismatch_is_checked_for_dropped_multi_rows_too(tmp_path):
    rows = good_rows()
    rows[1] = ("K2P:W9A", mutate(WT, (2, "P")), "-2.25")
    path = write_assay(tmp_path / "a.csv", rows)
    with pytest.raises(InputError, match=r"row 2 \('K2P:W9A'\): mutated_sequence"):
        read_assay(path, WT)


def test_read_assay_duplicate_names_both_rows(tmp_path):
    rows = good_rows() + [("V3H", mutate(WT, (3, "H")), "-1.4")]
    path = write_assay(tmp_path / "a.csv", rows)
    with pytest.raises(InputError, match=r"a\.csv, row 4 \('V3H'\): duplicate mutant, same as row 1"):
        read_assay(path, WT)


def test_read_assay_duplicate_in_other_site_order(tmp_path):
    rows = good_rows() + [("W9A:K2P", mutate(WT, (2, "P"), (9, "A")), "-2.0")]
    path = write_assay(tmp_path / "a.csv", rows)
    with pytest.raises(InputError, match=r"row 4 \('W9A:K2P'\): duplicate mutant, same as row 2"):
        read_assay(path, WT)


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "", "NA", "abc"])
def test_read_assay_non_finite_score(tmp_path, score):
    rows = good_rows()
    rows[0] = ("V3H", mutate(WT, (3, "H")), score)
    path = write_assay(tmp_path / "a.csv", rows)
    with pytest.raises(InputError, match=rf"a\.csv, row 1 \('V3H'\): DMS_score '{score}' is not a finite number"):
        read_assay(path, WT)


def test_read_assay_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(InputError, match=r"empty\.csv: cannot be read as CSV"):
        read_assay(path, WT)


# ---------------------------------------------------------------- select_from_assay

def big_table(n_rows: int = 400) -> pd.DataFrame:
    scores = np.linspace(-4.0, 2.0, n_rows)
    return pd.DataFrame({"mutant": [f"m{i}" for i in range(n_rows)], "dms_score": scores},
                        index=pd.RangeIndex(100, 100 + n_rows))


def test_select_deterministic_filtered_and_capped(caplog):
    table = big_table()
    with caplog.at_level(logging.INFO, logger="esmsae.inputs.mutations"):
        a = select_from_assay(table, max_dms=-1.0, n=30, seed=7, where="P1")
    b = select_from_assay(table, max_dms=-1.0, n=30, seed=7, where="P1")
    c = select_from_assay(table, max_dms=-1.0, n=30, seed=8, where="P1")
    assert a.dtype == bool and a.index.equals(table.index)
    assert a.equals(b)
    assert not a.equals(c)
    assert int(a.sum()) == 30
    assert (table.loc[a, "dms_score"] <= -1.0).all()
    n_pass = int((table["dms_score"] <= -1.0).sum())
    assert "P1: 400 rows read, 30 kept" in caplog.text
    assert f"dropped {400 - n_pass} with DMS_score > -1.0, {n_pass - 30} beyond n=30" in caplog.text


def test_select_draws_from_default_rng_in_file_order():
    table = big_table()
    mask = select_from_assay(table, max_dms=None, n=5, seed=3, where="P1")
    expected = np.sort(np.random.default_rng(3).choice(np.arange(400), size=5, replace=False))
    assert np.flatnonzero(mask.to_numpy()).tolist() == expected.tolist()


def test_select_keeps_all_when_fewer_than_n():
    table = big_table(20)
    mask = select_from_assay(table, max_dms=0.0, n=50, seed=0, where="P1")
    assert mask.tolist() == (table["dms_score"] <= 0.0).tolist()
    mask = select_from_assay(table, max_dms=None, n=50, seed=0, where="P1")
    assert mask.all()


def test_select_says_which_filter_emptied_it():
    table = big_table(1239)
    where = "mutations.max_dms=-5.0 for EPHB2_HUMAN"
    expected = r"^mutations\.max_dms=-5\.0 for EPHB2_HUMAN: 0 of 1239 rows have DMS_score <= -5\.0$"
    with pytest.raises(InputError, match=expected):
        select_from_assay(table, max_dms=-5.0, n=10, seed=0, where=where)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"max_dms": None, "n": 0}, r"n must be a positive integer, got 0"),
    ({"max_dms": None, "n": 2.5}, r"n must be a positive integer, got 2\.5"),
    ({"max_dms": float("nan"), "n": 3}, r"max_dms must be a finite number or null"),
])
def test_select_bad_settings(kwargs, problem):
    with pytest.raises(InputError, match=r"^P1: " + problem):
        select_from_assay(big_table(), seed=0, where="P1", **kwargs)


def test_select_empty_assay():
    with pytest.raises(InputError, match=r"^P1: the assay has no rows"):
        select_from_assay(big_table(0), max_dms=None, n=3, seed=0, where="P1")


# ---------------------------------------------------------------- select_lowest

def test_select_lowest_picks_lowest_with_stable_ties():
    scores = [0.5, -1.0, -2.0, -1.0, -1.0, 3.0]
    mask = select_lowest(scores, 3)
    assert mask.dtype == bool
    assert mask.tolist() == [False, True, True, True, False, False]
    assert select_lowest(scores, 1).tolist() == [False, False, True, False, False, False]
    assert select_lowest(scores, 10).all()


def test_select_lowest_rejects_bad_input():
    with pytest.raises(InputError, match="positive integer"):
        select_lowest([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="non-finite"):
        select_lowest([1.0, float("nan")], 1)


# ---------------------------------------------------------------- real ProteinGym data

@pytest.fixture(scope="module")
def reference_table() -> pd.DataFrame:
    return pd.read_csv(PROTEINGYM / "DMS_substitutions.csv").set_index("DMS_id")


@needs_proteingym
@pytest.mark.parametrize(("dms_id", "n_single"), sorted(REAL_ASSAYS.items()))
def test_real_assay_single_counts_and_selection(reference_table, dms_id, n_single):
    wt = reference_table.loc[dms_id, "target_seq"]
    path = PROTEINGYM / f"{dms_id}.csv"
    n_total = len(pd.read_csv(path))

    singles = read_assay(path, wt)
    assert len(singles) == n_single
    assert (singles["n_sites"] == 1).all()
    everything = read_assay(path, wt, multi=True)
    assert len(everything) == n_total
    assert (everything["n_sites"] > 1).sum() == n_total - n_single

    max_dms = -1.0
    mask = select_from_assay(singles, max_dms=max_dms, n=50, seed=0, where=dms_id)
    assert int(mask.sum()) == 50
    assert (singles.loc[mask, "dms_score"] <= max_dms).all()
    assert mask.equals(select_from_assay(singles, max_dms=max_dms, n=50, seed=0, where=dms_id))
