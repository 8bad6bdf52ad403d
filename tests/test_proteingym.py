"""The studied proteins read from ProteinGym's reference file (config key ``proteingym``), on hand-made files."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from esmsae.config.parse import load
from esmsae.inputs.proteingym import read_reference
from esmsae.pipeline.errors import InputError

from .conftest import DEFAULTS
from .conftest import SHARED_DMS as PROTEINGYM

SEQS = {"AAA_HUMAN_X_2020": "MKTAYIAK", "BBB_YEAST-2": "MGHHHHHH", "CCC_ECOLI_Y_2021": "MSTNPKPQ"}


def reference(folder, rows: dict[str, str] | None = None, *, files: bool = True, **extra) -> tuple[str, str]:
    """A reference file with one row per (DMS_id, sequence), its assay files (empty: only their names are
    checked here) in folder/dms; `extra` adds columns."""
    rows = SEQS if rows is None else rows
    (folder / "dms").mkdir(exist_ok=True)
    table = pd.DataFrame({"DMS_index": [f"DMS_sub_{i}" for i in range(len(rows))], "DMS_id": list(rows),
                          "DMS_filename": [f"{name}.csv" for name in rows], "target_seq": list(rows.values()),
                          "seq_len": [len(s) for s in rows.values()], **extra})
    table.to_csv(folder / "DMS_substitutions.csv", index=False)
    if files:
        for name in rows:
            (folder / "dms" / f"{name}.csv").write_text("mutant,mutated_sequence,DMS_score\n")
    return str(folder / "DMS_substitutions.csv"), str(folder / "dms")


def test_all_assays_in_the_files_order(tmp_path):
    ref, dms = reference(tmp_path)
    got = read_reference(ref, dms, "all")
    assert list(got) == list(SEQS)
    assert got["BBB_YEAST-2"] == {"wt_seq": "MGHHHHHH", "dms": str(tmp_path / "dms" / "BBB_YEAST-2.csv")}


def test_selection_by_id_keeps_the_files_order(tmp_path):
    ref, dms = reference(tmp_path)
    assert list(read_reference(ref, dms, ["CCC_ECOLI_Y_2021", "AAA_HUMAN_X_2020"])) == ["AAA_HUMAN_X_2020",
                                                                                       "CCC_ECOLI_Y_2021"]


def test_a_missing_assay_file_names_its_dms_id_and_path(tmp_path):
    ref, dms = reference(tmp_path)
    (tmp_path / "dms" / "BBB_YEAST-2.csv").unlink()
    path = tmp_path / "dms" / "BBB_YEAST-2.csv"
    with pytest.raises(InputError, match=re.escape(f"BBB_YEAST-2: assay file {path} not found (config key "
                                                   "proteingym.dms_dir)")):
        read_reference(ref, dms, "all")
    assert list(read_reference(ref, dms, ["AAA_HUMAN_X_2020"])) == ["AAA_HUMAN_X_2020"]  # only the chosen


def test_duplicate_dms_ids_are_refused(tmp_path):
    ref, dms = reference(tmp_path)
    table = pd.read_csv(ref)
    pd.concat([table, table.iloc[[1]]]).to_csv(ref, index=False)
    with pytest.raises(InputError, match=r"DMS_substitutions.csv: DMS_id 'BBB_YEAST-2' appears more than once"):
        read_reference(ref, dms, "all")


def test_an_unknown_assay_is_named(tmp_path):
    ref, dms = reference(tmp_path)
    with pytest.raises(InputError, match=r"config key proteingym.assays: \['ZZZ'\] not in .*DMS_substitutions.csv"):
        read_reference(ref, dms, ["AAA_HUMAN_X_2020", "ZZZ"])


@pytest.mark.parametrize("column", ["DMS_id", "target_seq", "DMS_filename"])
def test_a_missing_column_is_named(tmp_path, column):
    ref, dms = reference(tmp_path)
    pd.read_csv(ref).drop(columns=[column]).to_csv(ref, index=False)
    with pytest.raises(InputError, match=rf"not a ProteinGym reference file \(missing column\(s\) {column}\)"):
        read_reference(ref, dms, "all")


def test_an_empty_field_names_its_line(tmp_path):
    ref, dms = reference(tmp_path)
    table = pd.read_csv(ref)
    table.loc[2, "target_seq"] = None
    table.to_csv(ref, index=False)
    with pytest.raises(InputError, match=r"DMS_substitutions.csv, line 4: DMS_id, target_seq and DMS_filename"):
        read_reference(ref, dms, "all")


def test_a_missing_reference_file_names_the_key(tmp_path):
    with pytest.raises(InputError, match=r"nope.csv: ProteinGym reference file not found \(config key "
                                         r"proteingym.reference\)"):
        read_reference(tmp_path / "nope.csv", tmp_path, "all")


def study(tmp_path, **changes) -> dict:
    ref, dms = reference(tmp_path)
    return {"outdir": "o", "esm_checkpoint": "m.pt", "sae": {"dir": "s", "pattern": "l{layer}", "k": 8},
            "mutations": {"source": "dms"}, "patching": {"layers": [1]}, "ig": {"layers": [1]},
            "proteingym": {"reference": ref, "dms_dir": dms}, **changes}


def test_the_config_merges_proteingym_with_proteins_written_by_hand(tmp_path):
    (tmp_path / "mine.csv").write_text("mutant,mutated_sequence,DMS_score\n")
    config = study(tmp_path, proteins={"MINE": {"wt_seq": "MKV", "dms": str(tmp_path / "mine.csv"),
                                                "max_dms": -1.0}})
    config["proteingym"]["assays"] = ["CCC_ECOLI_Y_2021"]
    parsed = load(config)
    assert list(parsed.proteins) == ["MINE", "CCC_ECOLI_Y_2021"]
    assert parsed.proteins["CCC_ECOLI_Y_2021"].wt_seq == "MSTNPKPQ"
    assert parsed.proteins["CCC_ECOLI_Y_2021"].dms == str(tmp_path / "dms" / "CCC_ECOLI_Y_2021.csv")
    assert parsed.proteins["CCC_ECOLI_Y_2021"].selection.max_dms == DEFAULTS.proteins["P"].selection.max_dms
    assert parsed.proteins["MINE"].selection.max_dms == -1.0
    assert parsed.proteins["CCC_ECOLI_Y_2021"].annotations is None
    assert list(load(study(tmp_path)).proteins) == list(SEQS)  # `assays` defaults to all


def test_a_name_in_both_is_an_error(tmp_path):
    config = study(tmp_path, proteins={"AAA_HUMAN_X_2020": {"wt_seq": "MKV", "dms": "x.csv"}})
    with pytest.raises(InputError, match=r"config keys proteins and proteingym: \['AAA_HUMAN_X_2020'\] named in both"):
        load(config)


def test_a_study_without_proteins_is_refused(tmp_path):
    config = study(tmp_path)
    del config["proteingym"]
    with pytest.raises(InputError, match="config keys proteins and proteingym: no protein to study"):
        load(config)


def test_the_shared_reference_file_reads_whole():
    """ProteinGym's own file: 217 assays, the three study proteins among them."""
    if not (PROTEINGYM / "DMS_substitutions.csv").is_file():
        pytest.skip(f"{PROTEINGYM} is absent")
    table = pd.read_csv(PROTEINGYM / "DMS_substitutions.csv")
    assert len(table) == 217 and table["DMS_id"].is_unique
    got = read_reference(PROTEINGYM / "DMS_substitutions.csv", PROTEINGYM,
                         ["EPHB2_HUMAN_Tsuboyama_2023_1F0M", "DNJA1_HUMAN_Tsuboyama_2023_2LO1"])
    assert list(got) == ["DNJA1_HUMAN_Tsuboyama_2023_2LO1", "EPHB2_HUMAN_Tsuboyama_2023_1F0M"]
    assert int((table["seq_len"] > 1022).sum()) == 16


# -- the proteins the per-protein figures draw (figures.proteins) --------------------------------------------------
def assay(path, rows: list[tuple[str, float]]) -> str:
    pd.DataFrame({"mutant": [m for m, _ in rows], "DMS_score": [s for _, s in rows]}).to_csv(path, index=False)
    return str(path)


def test_selectable_count_by_hand(tmp_path):
    from esmsae.inputs.mutations import selectable_count

    path = assay(tmp_path / "a.csv", [("M1A", -2.0), ("M1C", -1.0), ("K2A:T3A", -3.0), ("K2C", 0.5), ("T3C", -1.5)])
    # singles at most -1.0: M1A, M1C, T3C (3); with multi also K2A:T3A (4); n caps; no max_dms keeps every single
    assert selectable_count(path, -1.0, 50, False) == 3
    assert selectable_count(path, -1.0, 50, True) == 4
    assert selectable_count(path, -1.0, 2, False) == 2
    assert selectable_count(path, None, 50, False) == 4


def test_figure_proteins_default_to_the_most_selected_with_ties_in_config_order(tmp_path):
    from esmsae.config.parse import figure_proteins

    seqs = {"P": "MKTAY", "Q": "MKTAY", "R": "MKTAY", "S": "MKTAY"}
    counts = {"P": 1, "Q": 3, "R": 2, "S": 3}  # singles at DMS_score -2.0
    files = {name: assay(tmp_path / f"{name}.csv", [(f"M1{aa}", -2.0) for aa in "ACDEF"[:n]] + [("K2A", 1.0)])
             for name, n in counts.items()}
    config = {"outdir": "o", "esm_checkpoint": "m.pt", "sae": {"dir": "s", "pattern": "l{layer}", "k": 8},
              "mutations": {"source": "dms", "max_dms": -1.0}, "patching": {"layers": [1]}, "ig": {"layers": [1]},
              "proteins": {name: {"wt_seq": seqs[name], "dms": files[name]} for name in seqs}}
    study = load(config)
    assert figure_proteins({"proteins": None, "n_proteins": 3}, study.proteins) == ("Q", "S", "R")
    assert figure_proteins({"proteins": None, "n_proteins": 1}, study.proteins) == ("Q",)  # Q before S: config order
    assert figure_proteins({"proteins": None, "n_proteins": 4}, study.proteins) == ("P", "Q", "R", "S")
    assert figure_proteins({"proteins": ["S", "P"], "n_proteins": 3}, study.proteins) == ("S", "P")
    with pytest.raises(InputError, match=re.escape("config key figures.proteins: ['X'] not among")):
        figure_proteins({"proteins": ["P", "X"], "n_proteins": 3}, study.proteins)


def test_a_figure_keeps_only_its_proteins():
    from esmsae.figures.registry import only_proteins

    table = pd.DataFrame({"protein": ["P", "Q", "R", "P"], "value": [1, 2, 3, 4]})
    assert only_proteins(table, ["P", "R"])["value"].tolist() == [1, 3, 4]
    by_pair = {("P", 2): "a", ("Q", 2): "b", ("R", 4): "c"}
    assert only_proteins(by_pair, ["Q"]) == {("Q", 2): "b"}
    labels = {(2, 7): "identity: K"}  # keyed by layer and feature: not a protein's
    assert only_proteins(labels, ["Q"]) == labels
    assert only_proteins(pd.DataFrame({"layer": [2]}), ["Q"]).shape == (1, 1)


def test_a_figure_drawn_for_a_few_proteins_gets_only_theirs_and_says_so(tmp_path, monkeypatch):
    from matplotlib.figure import Figure as MplFigure

    from esmsae.figures import registry

    got = {}

    def draw(table, png, pdf):
        got["proteins"] = table["protein"].tolist()
        fig = MplFigure()
        fig.add_subplot().plot([0, 1])
        registry.save(fig, png, pdf)
        got["figure"] = fig
        return fig

    table = pd.DataFrame({"protein": ["P", "Q", "R"], "value": [1, 2, 3]})
    monkeypatch.setitem(registry.FIGURES, "stand_in", registry.Figure(lambda inputs: {"table": table}, draw))
    png, pdf = tmp_path / "f.png", tmp_path / "f.pdf"
    registry.plot_figure("stand_in", {}, {"proteins": ["R", "P"]}, png, pdf)
    assert got["proteins"] == ["P", "R"] and png.stat().st_size and pdf.stat().st_size
    notes = [t.get_text() for t in got["figure"].texts]
    assert notes == ["drawn for 2 of the study's proteins (figures.proteins): R, P; the tables hold every protein"]
    registry.plot_figure("stand_in", {}, {}, png, pdf)  # no proteins option: everything, no note
    assert got["proteins"] == ["P", "Q", "R"] and not got["figure"].texts
    registry.plot_figure("stand_in", {}, {"activations": "fair-esm", "proteins": ["Q"]}, png, pdf)  # the forward too
    assert got["proteins"] == ["Q"] and [t.get_text() for t in got["figure"].texts] == [
        "the study reads its SAEs on the fair-esm forward (sae.activations); drawn for 1 of the study's proteins "
        "(figures.proteins): Q; the tables hold every protein"]
    registry.plot_figure("stand_in", {}, {"activations": "interprot"}, png, pdf)
    assert [t.get_text() for t in got["figure"].texts] == [
        "the study reads its SAEs on the interprot forward (sae.activations)"]
