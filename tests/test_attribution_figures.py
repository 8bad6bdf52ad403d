"""Attribution figures: both files written, valid, reproducible, with the artists each figure promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from esmsae import attribution_figures as af
from esmsae.attribution_tables import circuit_sizes
from tests.test_attribution_tables import planted, result, sizes_frame

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


def curve(mutant, fractions):
    return pd.DataFrame({"mutant": mutant, "k": np.arange(len(fractions)), "patched_score": 0.0,
                         "recovered_fraction": fractions})


@pytest.fixture
def curves():
    nan = float("nan")
    return {
        ("P", 4): pd.concat([curve("A1C", [0.0, 0.5, 1.0]), curve("A2C", [0.0, 0.7, 0.9])], ignore_index=True),
        ("Q", 4): pd.concat([curve("A1C", [0.0, 0.2, 0.8]), curve("A3C", [nan, nan, nan])], ignore_index=True),
        ("P", 2): curve("A1C", [0.0, 0.1, 0.4]),
        ("Q", 2): curve("A1C", [0.0, 0.3, 0.6]).iloc[:0],
    }


def test_ig_concentration(tmp_path, results):
    fig = af.ig_concentration(results, tmp_path / "c.png", tmp_path / "c.pdf")
    check_files(tmp_path, "c")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["layer 2", "layer 6"]
    line = ax.get_lines()[1]
    assert list(line.get_xdata()) == list(range(1, 31))  # d_sae = 30 < 100
    # Median over the 11 mutants at layer 6 of the share carried by the top feature.
    firsts = []
    for protein in ("P", "Q", "R"):
        for row in np.abs(results[(protein, 6)]["attribution"]):
            firsts.append(row.max() / row.sum())
    assert line.get_ydata()[0] == pytest.approx(np.median(firsts))
    assert line.get_ydata()[-1] == pytest.approx(1.0)
    assert ax.get_legend() is not None and ax.get_xscale() == "log"


def test_circuit_faithfulness(tmp_path, curves):
    fig = af.circuit_faithfulness(curves, tmp_path / "f.png", tmp_path / "f.pdf", recover=0.85)
    check_files(tmp_path, "f")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2 + 1
    assert [line.get_label() for line in lines[:2]] == ["layer 2", "layer 4"]
    np.testing.assert_allclose(lines[0].get_ydata(), [0.0, 0.1, 0.4])
    np.testing.assert_allclose(lines[1].get_ydata(), [0.0, 0.5, 0.9])  # Q's NaN mutant ignored
    assert list(lines[1].get_xdata()) == [0, 1, 2]
    assert list(lines[2].get_ydata()) == [0.85, 0.85] and lines[2].get_linestyle() == "--"


def test_universal_features(tmp_path, results):
    fig = af.universal_features(results, tmp_path / "u.png", tmp_path / "u.pdf")
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
    fig = af.universal_features(results, tmp_path / "u.png", tmp_path / "u.pdf", n=20)
    assert np.asarray(fig.axes[0].get_images()[0].get_array()).shape == (30, 2)


def test_minimal_circuit_sizes(tmp_path):
    sizes = circuit_sizes([sizes_frame("P", 4, [1, None, 3]), sizes_frame("Q", 4, [2, None]),
                           sizes_frame("P", 2, [None, None])])
    fig = af.minimal_circuit_sizes(sizes, tmp_path / "s.png", tmp_path / "s.pdf", max_k=5)
    check_files(tmp_path, "s")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["none: 2/2", "none: 2/5"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4"]
    with pytest.raises(ValueError, match=r"\('Q', layer 4\)"):
        af.minimal_circuit_sizes(sizes_frame("Q", 4, [9]), tmp_path / "x.png", tmp_path / "x.pdf", max_k=5)


def test_empty_inputs_do_not_crash(tmp_path):
    empty_results = {("P", 1): result(np.zeros((0, 8)), 1), ("Q", 1): result(np.zeros((2, 8)), 1)}
    for name, res in {"none": {}, "empty": empty_results}.items():
        out = tmp_path / name
        fig = af.ig_concentration(res, out / "c.png", out / "c.pdf")
        assert len(fig.axes[0].get_lines()) == 0 and fig.axes[0].texts
        fig = af.universal_features(res, out / "u.png", out / "u.pdf")
        assert not fig.axes[0].get_images() and fig.axes[0].texts
        check_files(out, "c")
        check_files(out, "u")
    out = tmp_path / "curves"
    for name, curves in {"none": {}, "empty": {("P", 1): curve("A1C", []).astype({"k": "int64"})}}.items():
        fig = af.circuit_faithfulness(curves, out / f"{name}.png", out / f"{name}.pdf")
        assert len(fig.axes[0].get_lines()) == 1 and fig.axes[0].texts
        check_files(out, name)
    fig = af.minimal_circuit_sizes(circuit_sizes([]), out / "s.png", out / "s.pdf", max_k=5)
    assert fig.axes[0].texts
    check_files(out, "s")


def test_figures_are_reproducible(tmp_path, results, curves):
    sizes = circuit_sizes([sizes_frame("P", 4, [1, None, 3])])
    for run in ("a", "b"):
        d = tmp_path / run
        af.ig_concentration(results, d / "c.png", d / "c.pdf")
        af.circuit_faithfulness(curves, d / "f.png", d / "f.pdf")
        af.universal_features(results, d / "u.png", d / "u.pdf")
        af.minimal_circuit_sizes(sizes, d / "s.png", d / "s.pdf", max_k=5)
    for name in ("c", "f", "u", "s"):
        for ext in ("png", "pdf"):
            a, b = (tmp_path / run / f"{name}.{ext}" for run in ("a", "b"))
            assert a.read_bytes() == b.read_bytes(), f"{name}.{ext}"
