"""Attribution figures: both files written, valid, reproducible, with the artists each figure promises.

Where a figure draws numbers, they are checked against values worked out by hand (the CASES of
tests.attribution_cases, each derived there in a comment) or computed with numpy here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from esmsae.figures import ig as ig_figures
from esmsae.figures.circuits import circuit_faithfulness, minimal_circuit_sizes
from esmsae.figures.ig import universal_features
from esmsae.pipeline.columns import CURVE_COLUMNS, read_table
from esmsae.tables.circuits import circuit_sizes
from esmsae.tables.ig import ig_concentration
from tests.attribution_cases import CASES, case_result, planted, result, sizes_frame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_files(directory, name):
    png, pdf = directory / f"{name}.png", directory / f"{name}.pdf"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert pdf.read_bytes().startswith(b"%PDF")
    assert png.stat().st_size > 2000 and pdf.stat().st_size > 2000
    assert not list(directory.glob(".*.tmp"))


@pytest.fixture
def results():
    """P, Q, R at layers 6 and 2 (given out of order); layer 2 attributions scaled down so 6 is the peak."""
    out = {}
    for layer, scale in ((6, 1.0), (2, 0.1)):
        for protein, r in planted(layer).items():
            out[(protein, layer)] = {**r, "attribution": r["attribution"] * scale}
    return out


# Mutants of the hand-made CASES per (protein, layer), layers given out of order.
CONCENTRATION = {("Q", 5): ["two", "one"], ("P", 2): ["four", "two", "one"], ("P", 5): ["four", "empty"],
                 ("Q", 2): ["four"]}


@pytest.fixture
def concentration_results():
    return {key: case_result(names, key[1]) for key, names in CONCENTRATION.items()}


def pooled(layer, stat):
    """Mean and s.e.m. over every mutant at `layer`, from the hand-worked CASES values (NaN skipped)."""
    values = np.array([CASES[name][3][stat] for (_, at_layer), names in CONCENTRATION.items() if at_layer == layer
                       for name in names], dtype=np.float64)
    values = values[np.isfinite(values)]
    return values.mean(), values.std(ddof=1) / np.sqrt(values.size)


def curve(mutant, recovered, complement, full_effect=1.0, layer=1):
    """Circuit curves as esmsae.analyses.circuits.curves_table writes them (negligible: a tiny full_effect)."""
    n = len(recovered)
    return pd.DataFrame({
        "mutant": mutant, "n_features": np.arange(n, dtype=np.int64),
        "feature": pd.array([pd.NA, *range(n - 1)] if n else [], dtype="Int64"), "patched_score": 0.0,
        "recovered_fraction": np.asarray(recovered, dtype=np.float64), "complement_score": 0.0,
        "complement_fraction": np.asarray(complement, dtype=np.float64), "full_effect": full_effect,
        "layer": layer, "k": 8, "d_sae": 30, "space": "latent",
    }, columns=CURVE_COLUMNS)


@pytest.fixture
def curves():
    """Layer 4: three mutants and a negligible one (A4C) whose wild ratios would move every median; layer 2: one."""
    return {
        ("P", 4): pd.concat([curve("A1C", [0.0, 0.5, 1.0], [1.0, 0.4, 0.0], layer=4),
                             curve("A2C", [0.0, 0.7, 0.9], [1.0, 0.2, 0.1], layer=4)], ignore_index=True),
        ("Q", 4): pd.concat([curve("A3C", [0.0, 0.2, 0.8], [1.0, 0.9, 0.3], layer=4),
                             curve("A4C", [0.0, 50.0, -40.0], [1.0, -30.0, 60.0], full_effect=1e-4,
                                   layer=4)], ignore_index=True),
        ("P", 2): curve("A1C", [0.0, 0.1, 0.4], [1.0, 0.8, 0.5], layer=2),
        ("Q", 2): curve("A1C", [0.0, 0.3], [1.0, 0.6], layer=2).iloc[:0],
    }


# --- ig_concentration ------------------------------------------------------------------------------------------------

def test_ig_concentration(tmp_path, concentration_results):
    fig = ig_figures.ig_concentration(concentration_results, tmp_path / "c.png", tmp_path / "c.pdf")
    check_files(tmp_path, "c")
    assert len(fig.axes) == 3
    panels = {
        0: [("gini", "IG |A|", "-"), ("gini_null", "null |Δ|", "--")],
        1: [("k90", "IG |A|", "-"), ("k90_null", "null |Δ|", "--"), ("n_changed", "|C| changed", ":")],
        2: [("top20_share", "top-20 share", "-"), ("top20_share_null", "top-20 share, null", "--"),
            ("error_share", "error node", "-")],
    }
    for i, expected in panels.items():
        ax = fig.axes[i]
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [label for _, label, _ in expected]
        assert [line.get_linestyle() for line in lines] == [style for _, _, style in expected]
        assert ax.get_legend() is not None
        for line, (stat, _, _) in zip(lines, expected, strict=True):
            assert list(line.get_xdata()) == [2, 5]
            np.testing.assert_allclose(line.get_ydata(), [pooled(2, stat)[0], pooled(5, stat)[0]], rtol=1e-12,
                                       err_msg=stat)
    # By hand, Gini at layer 2 over four, two, one, four: (1/4 + 1/4 + 2/3 + 1/4)/4 = 17/48; at layer 5 over
    # two, one, four (empty has none): 7/18. |C| at layer 5 counts the empty mutant: (2 + 3 + 4 + 0)/4.
    assert fig.axes[0].get_lines()[0].get_ydata()[0] == pytest.approx(17 / 48)
    assert fig.axes[0].get_lines()[0].get_ydata()[1] == pytest.approx(7 / 18)
    assert fig.axes[1].get_lines()[2].get_ydata()[1] == pytest.approx(2.25)
    # The Gini's error bars are ± s.e.m. over the mutants: one vertical segment per layer.
    segments = fig.axes[0].collections[0].get_segments()
    for segment, layer in zip(segments, (2, 5), strict=True):
        mean, sem = pooled(layer, "gini")
        np.testing.assert_allclose(segment, [[layer, mean - sem], [layer, mean + sem]], rtol=1e-12)
    # Above layer 2's point: Gini above the null for four, one, four, not two: 3 of 4.
    assert fig.axes[0].texts[0].get_text() == "75%"
    assert fig.axes[0].get_ylim()[1] >= 1.0 and fig.axes[2].get_ylim()[1] >= 1.0


def test_ig_concentration_share_above_null_agrees_with_the_table(tmp_path, concentration_results):
    # Layer 5: Q's two (equal to its null) and one (above); P's four (above) and empty (no Gini, no null).
    table = ig_concentration(concentration_results).set_index(["protein", "layer"])
    assert table.loc[("Q", 5), "gini_above_null"] == 0.5 and table.loc[("P", 5), "gini_above_null"] == 1.0
    # Pooled the same way, 2 of the 3 mutants with a Gini are above their null (not 2 of 4); a layer
    # whose only mutant has no Gini gets no share.
    only_empty = {("R", 7): case_result(["empty"], 7)}
    fig = ig_figures.ig_concentration({**concentration_results, **only_empty}, tmp_path / "c.png", tmp_path / "c.pdf")
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [2, 5, 7]
    assert [t.get_text() for t in fig.axes[0].texts] == ["75%", "67%"]


# --- circuit_faithfulness --------------------------------------------------------------------------------------------

def test_circuit_faithfulness(tmp_path, curves):
    fig = circuit_faithfulness(curves, tmp_path / "f.png", tmp_path / "f.pdf", recover=0.85)
    check_files(tmp_path, "f")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2 * 2 + 1  # two per layer with curves (Q's layer 2 table is empty), and y = 0
    assert [line.get_label() for line in lines[:4]] == [
        "layer 2 (1 of 1; 0 negligible)", "layer 2 without", "layer 4 (3 of 4; 1 negligible)", "layer 4 without"]
    assert [line.get_linestyle() for line in lines[:4]] == ["-", "--", "-", "--"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color() == lines[3].get_color()
    np.testing.assert_allclose(lines[0].get_ydata(), [0.0, 0.1, 0.4])
    np.testing.assert_allclose(lines[1].get_ydata(), [1.0, 0.8, 0.5])
    # Layer 4, A4C (negligible) left out: r medians of (0.5, 0.7, 0.2) and (1.0, 0.9, 0.8); with it the
    # n = 1 median would be 0.6. c medians of (0.4, 0.2, 0.9) and (0.0, 0.1, 0.3).
    np.testing.assert_allclose(lines[2].get_ydata(), [0.0, 0.5, 0.9])
    np.testing.assert_allclose(lines[3].get_ydata(), [1.0, 0.4, 0.1])
    assert list(lines[2].get_xdata()) == [0, 1, 2] and list(lines[3].get_xdata()) == [0, 1, 2]
    assert list(lines[4].get_ydata()) == [0, 0]
    band = ax.patches[0]  # 1 ± (1 − recover)
    assert band.get_y() == pytest.approx(0.85) and band.get_height() == pytest.approx(0.3)
    # min_effect is read at drawing time: above every |F| (1.0, and A4C's 1e-4), every mutant is negligible.
    fig = circuit_faithfulness(curves, tmp_path / "g.png", tmp_path / "g.pdf", min_effect=2.0)
    assert fig.axes[0].get_lines()[2].get_label() == "layer 4 (0 of 4; 4 negligible)"


def test_circuit_faithfulness_reads_curves_back_from_csv(tmp_path, curves):
    for key, table in curves.items():
        table.to_csv(tmp_path / f"{key[0]}{key[1]}.csv", index=False)
    read = {key: read_table(tmp_path / f"{key[0]}{key[1]}.csv", "circuit_curves") for key in curves}
    fig = circuit_faithfulness(read, tmp_path / "f.png", tmp_path / "f.pdf")
    np.testing.assert_allclose(fig.axes[0].get_lines()[2].get_ydata(), [0.0, 0.5, 0.9])
    assert fig.axes[0].get_lines()[2].get_label() == "layer 4 (3 of 4; 1 negligible)"
    with pytest.raises(ValueError, match=r"\('P', layer 4\).*complement_fraction"):
        circuit_faithfulness({("P", 4): curves[("P", 4)].drop(columns="complement_fraction")},
                             tmp_path / "x.png", tmp_path / "x.pdf")


def test_circuit_faithfulness_counts_mutants_of_different_proteins_apart(tmp_path):
    # Mutant names repeat across proteins: P's A1C and Q's A1C are two mutants.
    curves = {("P", 4): curve("A1C", [0.0, 1.0], [1.0, 0.0], layer=4),
              ("Q", 4): curve("A1C", [0.0, 9.0], [1.0, 9.0], full_effect=-0.01, layer=4)}
    fig = circuit_faithfulness(curves, tmp_path / "f.png", tmp_path / "f.pdf")
    assert fig.axes[0].get_lines()[0].get_label() == "layer 4 (1 of 2; 1 negligible)"


# --- universal_features ----------------------------------------------------------------------------------------------

def test_universal_features(tmp_path, results):
    fig = universal_features(results, tmp_path / "u.png", tmp_path / "u.pdf")
    check_files(tmp_path, "u")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # heatmap and colorbar
    assert "layer 6" in ax.get_title()
    images = ax.get_images()
    assert len(images) == 1
    data = np.asarray(images[0].get_array())
    # Features with a nonzero fraction at layer 6: 3, 7, 11, 20–23, 25 → 8 rows; 3 proteins.
    assert data.shape == (8, 3)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # Mean fraction: 7 → 2/3, 3 → 0.5, 11 → (1 + 0 + 1/3)/3, then 20–25 → 1/12 each.
    assert labels == ["7", "3", "11", "20", "21", "22", "23", "25"]
    np.testing.assert_allclose(data[0], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(data[2], [1.0, 0.0, 1 / 3])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["P", "Q", "R"]


def test_universal_features_at_most_30_rows(tmp_path):
    rng = np.random.default_rng(0)
    results = {(p, 1): result(rng.normal(size=(5, 200)), 1) for p in ("P", "Q")}
    fig = universal_features(results, tmp_path / "u.png", tmp_path / "u.pdf", n=20)
    assert np.asarray(fig.axes[0].get_images()[0].get_array()).shape == (30, 2)


# --- minimal_circuit_sizes -------------------------------------------------------------------------------------------

def test_minimal_circuit_sizes(tmp_path):
    # Layer 4: P sizes 1, none, 3 and Q 2, negligible, none → 6 mutants, 3 sizes, 2 none, 1 negligible.
    # Layer 2: both negligible.
    sizes = circuit_sizes([sizes_frame("P", 4, [1, None, 3]),
                           sizes_frame("Q", 4, [2, None, None], negligible=[False, True, False]),
                           sizes_frame("P", 2, [None, None], negligible=[True, True])])
    sizes.to_csv(tmp_path / "sizes.csv", index=False)
    read = read_table(tmp_path / "sizes.csv", "circuit_sizes")  # as the figure rule gets it
    for name, table in (("s", sizes), ("r", read)):
        fig = minimal_circuit_sizes(table, tmp_path / f"{name}.png", tmp_path / f"{name}.pdf", max_k=5)
        check_files(tmp_path, name)
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.texts] == ["none: 0/2\nnegligible: 2/2", "none: 2/6\nnegligible: 1/6"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4"]
        points = [c.get_offsets() for c in ax.collections]
        assert [len(p) for p in points] == [0, 3]
        assert sorted(np.asarray(points[1])[:, 1].tolist()) == [1.0, 2.0, 3.0]
        assert np.all(np.abs(np.asarray(points[1])[:, 0] - 1) <= 0.15)


def test_minimal_circuit_sizes_rejects_bad_input(tmp_path):
    png, pdf = tmp_path / "x.png", tmp_path / "x.pdf"
    with pytest.raises(ValueError, match=r"\('Q', layer 4\).*outside 0..5"):
        minimal_circuit_sizes(sizes_frame("Q", 4, [2, 9]), png, pdf, max_k=5)
    with pytest.raises(ValueError, match=r"\('Q', layer 4\).*outside 0..5"):
        minimal_circuit_sizes(sizes_frame("Q", 4, [-1]), png, pdf, max_k=5)
    with pytest.raises(ValueError, match="missing columns.*negligible"):
        minimal_circuit_sizes(sizes_frame("Q", 4, [1]).drop(columns="negligible"), png, pdf, max_k=5)
    with pytest.raises(ValueError, match="max_k"):
        minimal_circuit_sizes(sizes_frame("Q", 4, [1]), png, pdf, max_k=-1)


# --- empty inputs and reproducibility --------------------------------------------------------------------------------

def test_empty_inputs_do_not_crash(tmp_path):
    empty_results = {("P", 1): result(np.zeros((0, 8)), 1), ("Q", 1): result(np.zeros((2, 8)), 1)}
    for name, res in {"none": {}, "empty": empty_results}.items():
        out = tmp_path / name
        fig = ig_figures.ig_concentration(res, out / "c.png", out / "c.pdf")
        if name == "none":
            assert len(fig.axes) == 3
            for ax in fig.axes:
                assert ax.texts and all(len(line.get_xdata()) == 0 for line in ax.get_lines())
        fig = universal_features(res, out / "u.png", out / "u.pdf")
        assert not fig.axes[0].get_images() and fig.axes[0].texts
        check_files(out, "c")
        check_files(out, "u")
    out = tmp_path / "curves"
    for name, curves in {"none": {}, "empty": {("P", 1): curve("A1C", [], [])}}.items():
        fig = circuit_faithfulness(curves, out / f"{name}.png", out / f"{name}.pdf")
        assert len(fig.axes[0].get_lines()) == 1 and fig.axes[0].texts  # only y = 0, and a note
        check_files(out, name)
    only_negligible = {("P", 1): curve("A1C", [0.0, 3.0], [1.0, 2.0], full_effect=0.0)}
    fig = circuit_faithfulness(only_negligible, out / "n.png", out / "n.pdf")
    assert fig.axes[0].get_lines()[0].get_label() == "layer 1 (0 of 1; 1 negligible)"
    assert all(len(line.get_xdata()) == 0 for line in fig.axes[0].get_lines()[:2])
    fig = minimal_circuit_sizes(circuit_sizes([]), out / "s.png", out / "s.pdf", max_k=5)
    assert fig.axes[0].texts
    check_files(out, "s")


def test_figures_are_reproducible(tmp_path, results, concentration_results, curves):
    sizes = circuit_sizes([sizes_frame("P", 4, [1, None, 3]), sizes_frame("Q", 4, [None], negligible=[True])])
    for run in ("a", "b"):
        d = tmp_path / run
        ig_figures.ig_concentration({**results, **concentration_results}, d / "c.png", d / "c.pdf")
        circuit_faithfulness(curves, d / "f.png", d / "f.pdf")
        universal_features(results, d / "u.png", d / "u.pdf")
        minimal_circuit_sizes(sizes, d / "s.png", d / "s.pdf", max_k=5)
    for name in ("c", "f", "u", "s"):
        for ext in ("png", "pdf"):
            a, b = (tmp_path / run / f"{name}.{ext}" for run in ("a", "b"))
            assert a.read_bytes() == b.read_bytes(), f"{name}.{ext}"
