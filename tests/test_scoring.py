"""Scores tables: each mutant's DMS score is its own assay row's, and the DMS correlation by row set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from esmsae.analyses.scoring import scores_table, wt_log_probs, wt_marginal
from esmsae.inputs.mutations import parse_mutant
from esmsae.tables.scoring import dms_correlation

from .conftest import DEFAULTS, DMS_FILES, SHARED_DMS, WT, needs_dms

SEQ = WT["PR40A_HUMAN"]


def write_assay(path, rows):
    """A ProteinGym-format assay with the given (mutant, DMS_score) rows, in that order."""
    wt = SEQ
    table = pd.DataFrame({
        "mutant": [m for m, _ in rows],
        "mutated_sequence": [parse_mutant(m, wt).apply(wt) for m, _ in rows],
        "DMS_score": [score for _, score in rows],
    })
    table.to_csv(path, index=False)
    return path


def selection(**changes):
    return dataclasses.replace(DEFAULTS.proteins["P"].selection, **changes)


@pytest.mark.parametrize("source", ["dms", "model"])
def test_each_mutant_gets_its_own_rows_dms_score(lm, tmp_path, source):
    # Scores that a shifted join or a sort would scramble: each row's score encodes its mutant.
    names = ["T1A", "W4K", "K7P", "E9Q", "L17R:N38Y", "F14G"]
    rows = [(name, -float(i) - 0.25 * len(name)) for i, name in enumerate(names)]
    assay = write_assay(tmp_path / "assay.csv", rows[::-1])  # file order differs from the list
    table = scores_table(lm, "PR40A_HUMAN", SEQ, assay, selection(source=source, n=3, multi=True))
    expected = dict(rows)
    with_dms = table[table["dms_score"].notna()]
    assert set(with_dms["mutant"]) == (set(names) if source == "dms" else {n for n in names if ":" not in n})
    for mutant, score in zip(with_dms["mutant"], with_dms["dms_score"], strict=True):
        assert score == expected[mutant], mutant
    assert table["dms_score"].isna().sum() == len(table) - len(with_dms)


def test_dms_correlation_reports_singles_and_all_rows_under_both_forwards():
    rng = np.random.default_rng(3)
    inter, fair = rng.normal(size=8), rng.normal(size=8)
    table = pd.DataFrame({
        "mutant": ["A1C", "D2E", "F3G", "H4I", "K5L", "A1C:D2E", "F3G:H4I", "K5L:A1C"],
        "wt_marginal": fair, "dms_score": rng.normal(size=8), "activations": "fair-esm",
        "wt_marginal_interprot": inter, "wt_marginal_fair_esm": fair,
    })
    out = dms_correlation({"P": table}).set_index(["rows", "activations"])
    assert len(out) == 4
    singles, every = table.iloc[:5], table
    for name, subset in (("singles", singles), ("all", every)):
        for forward, column in (("interprot", "wt_marginal_interprot"), ("fair-esm", "wt_marginal_fair_esm")):
            expected = stats.spearmanr(subset[column], subset["dms_score"])
            row = out.loc[(name, forward)]
            assert row["n"] == len(subset)
            assert row["spearman"] == pytest.approx(expected.statistic)
            assert row["p_value"] == pytest.approx(expected.pvalue)
            assert bool(row["study_forward"]) == (forward == "fair-esm")  # the table's own `activations`
    assert out.loc[("singles", "interprot"), "spearman"] != out.loc[("all", "interprot"), "spearman"]
    assert out.loc[("all", "interprot"), "spearman"] != out.loc[("all", "fair-esm"), "spearman"]


def test_scores_carry_both_forwards_and_wt_marginal_is_the_studys(lm):
    """wt_marginal is the score on the lm's forward; each forward's column is that forward's own WT-marginal."""
    table = scores_table(lm.on("interprot"), "PR40A_HUMAN", SEQ, None, selection(source="model", n=3))
    assert (table["activations"] == "interprot").all()
    assert table["wt_marginal"].equals(table["wt_marginal_interprot"])
    mutants = [parse_mutant(name, SEQ) for name in table["mutant"][:20]]
    for forward, column in (("interprot", "wt_marginal_interprot"), ("fair-esm", "wt_marginal_fair_esm")):
        on = lm.on(forward)
        expected = wt_marginal(on, wt_log_probs(on, SEQ), mutants)
        assert np.array_equal(table[column][:20].to_numpy(), expected)
    assert not np.allclose(table["wt_marginal_interprot"], table["wt_marginal_fair_esm"])


@needs_dms
def test_real_assay_scores_are_the_rows(lm):
    assay = pd.read_csv(SHARED_DMS / DMS_FILES["PR40A_HUMAN"])
    table = scores_table(lm, "PR40A_HUMAN", SEQ, SHARED_DMS / DMS_FILES["PR40A_HUMAN"],
                         selection(source="dms", max_dms=-1.5, n=5, multi=True))
    by_name = dict(zip(assay["mutant"], assay["DMS_score"], strict=True))
    assert len(table) == len(assay)
    assert all(table["dms_score"] == table["mutant"].map(by_name))
    assert (table.loc[table["selected"], "dms_score"] <= -1.5).all() and table["selected"].sum() == 5
