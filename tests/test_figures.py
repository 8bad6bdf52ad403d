"""Figures: both files written, valid, reproducible, with the artists each figure promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from esmsae.figures.patching import controls, delta_vs_effect, layer_effects
from esmsae.pipeline.columns import PATCH_COLUMNS
from esmsae.tables.patching import control_validation

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def patch(mutant, feature, control, effect, delta, layer):
    return {"mutant": mutant, "position": mutant[1:-1], "layer": layer, "feature": feature, "control": control,
            "wt_pre": 0.0, "mut_pre": delta, "wt_latent": 0.0, "mut_latent": delta, "patched_value": delta,
            "baseline_score": -1.0, "patched_score": -1.0 + effect, "effect": effect, "k": 8, "d_sae": 96,
            "space": "latent"}


def make_table(layer, seed, n_real=7):  # three mutants with 3, 2 and 2 real patches
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_real):
        mutant = f"A{f % 3 + 1}C"
        effect, delta = float(rng.normal()), float(rng.random())
        rows += [patch(mutant, f, "real", effect, delta, layer), patch(mutant, f, "noop", 0.0, delta, layer),
                 patch(mutant, 100 + f, "stable", 0.1 * float(rng.normal()), 0.0, layer),
                 patch(mutant, 200 + f, "random", 0.3 * float(rng.normal()), delta, layer)]
    return pd.DataFrame(rows, columns=PATCH_COLUMNS)


@pytest.fixture
def tables():
    """Three proteins over layers 2, 6 and 4 (given out of order); R has only two layers and an empty table."""
    out = {}
    for i, protein in enumerate(["P", "Q", "R"]):
        for layer in (2, 6, 4):
            out[(protein, layer)] = make_table(layer, seed=10 * i + layer)
    out[("R", 6)] = pd.DataFrame(columns=PATCH_COLUMNS)
    del out[("R", 4)]
    return out


def check_files(tmp_path, name):
    png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert pdf.read_bytes().startswith(b"%PDF")
    assert png.stat().st_size > 2000 and pdf.stat().st_size > 2000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def data_lines(ax):
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_layer_effects(tmp_path, tables):
    fig = layer_effects(control_validation(tables), tmp_path / "le.png", tmp_path / "le.pdf")
    check_files(tmp_path, "le")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3  # one line per protein; error bars are collections, not lines
    assert [line.get_label() for line in ax.get_lines()] == ["P", "Q", "R"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["P", "Q", "R"]
    p = ax.get_lines()[0]
    assert list(p.get_xdata()) == [2, 4, 6]
    # The mutant is the unit: each mutant's mean |effect|, then the mean over mutants (not over patches).
    real = [tables[("P", layer)].query("control == 'real'").assign(a=lambda t: t["effect"].abs())
            .groupby("mutant")["a"].mean().mean() for layer in (2, 4, 6)]
    pooled = [np.abs(tables[("P", layer)].query("control == 'real'")["effect"]).mean() for layer in (2, 4, 6)]
    np.testing.assert_allclose(p.get_ydata(), real, rtol=1e-12)
    assert not np.allclose(real, pooled)
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() and ax.get_title()


def test_controls(tmp_path, tables):
    fig = controls(control_validation(tables), tmp_path / "c.png", tmp_path / "c.pdf")
    check_files(tmp_path, "c")
    assert [ax.get_title() for ax in fig.axes] == ["P", "Q", "R"]
    for ax in fig.axes:
        assert [line.get_label() for line in data_lines(ax)] == ["real", "noop", "stable", "random"]
        assert len(ax.get_lines()) == 4
        assert ax.get_legend() is not None
    noop = fig.axes[0].get_lines()[1]
    assert list(noop.get_ydata()) == [0.0, 0.0, 0.0]


def test_delta_vs_effect(tmp_path, tables):
    fig = delta_vs_effect(tables, tmp_path / "d.png", tmp_path / "d.pdf")
    check_files(tmp_path, "d")
    assert len(fig.axes) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(":")[0] for t in titles] == ["layer 2", "layer 4", "layer 6"]
    # Layer 6: P and Q have points, R's table is empty; ρ over P and Q together.
    ax6 = fig.axes[2]
    assert [c.get_label() for c in ax6.collections] == ["P", "Q"]
    pooled = pd.concat([tables[(p, 6)].query("control == 'real'") for p in ("P", "Q")])
    rho = stats.spearmanr(np.abs(pooled["mut_latent"] - pooled["wt_latent"]), np.abs(pooled["effect"])).statistic
    assert titles[2] == f"layer 6: ρ = {rho:.2f}"
    # A protein keeps its colour across panels, and the points are the real rows.
    assert np.allclose(fig.axes[0].collections[0].get_facecolor(), ax6.collections[0].get_facecolor())
    offsets = fig.axes[0].collections[0].get_offsets()
    real = tables[("P", 2)].query("control == 'real'")
    np.testing.assert_allclose(offsets[:, 1], np.abs(real["effect"]))


def test_delta_vs_effect_na_rho(tmp_path):
    few = pd.DataFrame([patch("A1C", 0, "real", 0.5, 1.0, 3), patch("A1C", 1, "real", 0.2, 0.4, 3)],
                       columns=PATCH_COLUMNS)
    constant = pd.DataFrame([patch("A1C", f, "real", 0.1 * f, 1.0, 5) for f in range(5)], columns=PATCH_COLUMNS)
    only_controls = pd.DataFrame([patch("A1C", 0, "noop", 0.0, 1.0, 7)], columns=PATCH_COLUMNS)
    fig = delta_vs_effect({("P", 5): constant, ("P", 3): few, ("P", 7): only_controls},
                          tmp_path / "d.png", tmp_path / "d.pdf")
    check_files(tmp_path, "d")
    assert [ax.get_title() for ax in fig.axes] == ["layer 3: ρ = n/a", "layer 5: ρ = n/a", "layer 7: ρ = n/a"]
    assert len(fig.axes[2].collections) == 0
    assert "no real patches" in [t.get_text() for t in fig.axes[2].texts]


def test_empty_inputs_do_not_crash(tmp_path):
    empty = pd.DataFrame(columns=PATCH_COLUMNS)
    for name, tables in {"none": {}, "empty": {("P", 1): empty, ("Q", 2): empty}}.items():
        validation = control_validation(tables)
        out = tmp_path / name
        fig = layer_effects(validation, out / "le.png", out / "le.pdf")
        assert len(fig.axes) == 1 and any("no" in t.get_text() for t in fig.axes[0].texts)
        fig = controls(validation, out / "c.png", out / "c.pdf")
        assert len(fig.axes) == max(1, len(validation["protein"].unique()))
        fig = delta_vs_effect(tables, out / "d.png", out / "d.pdf")
        assert len(fig.axes) == max(1, len(tables))
        for stem in ("le", "c", "d"):
            check_files(out, stem)


def test_figures_are_reproducible(tmp_path, tables):
    validation = control_validation(tables)
    for run in ("a", "b"):
        layer_effects(validation, tmp_path / run / "le.png", tmp_path / run / "le.pdf")
        delta_vs_effect(tables, tmp_path / run / "d.png", tmp_path / run / "d.pdf")
    for name in ("le.png", "le.pdf", "d.png", "d.pdf"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name



@pytest.mark.parametrize("caption", sorted((Path(__file__).parents[1] / "rules" / "report").glob("*.rst")),
                         ids=lambda p: p.stem)
def test_report_captions_render_without_warnings(caption):
    """Every caption is reStructuredText: a bare |x| is a substitution, `word_` a link; either breaks the report."""
    from docutils.core import publish_doctree

    texts = [caption.read_text()]
    if "{%" in texts[0]:  # the report's description is a Jinja template over the config: render it as Snakemake does
        import jinja2

        class Snakemake:
            config = {"_report": {"outdir": "results/demo", "findings": [
                {"claim": "peak_layer", "scope": "all", "verdict": "supported", "figure": "layer_effects.png",
                 "sentence": "all: peak at layer 4 (mean \\|effect\\| 0.2) (p = 0.01)"},
                {"claim": "x", "scope": "P", "verdict": "indistinguishable from null", "figure": "", "sentence": "P"}]}}

        class Empty:
            config = {}

        template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(texts[0])
        texts = [template.render(snakemake=Snakemake) + "\n\n.. _layer_effects.png: javascript:x\n",
                 template.render(snakemake=Empty)]
    for text in texts:
        doctree = publish_doctree(text, settings_overrides={"report_level": 5, "warning_stream": False})
        broken = [n.astext() for n in doctree.findall(lambda n: n.tagname in ("problematic", "system_message"))]
        broken += [m.astext() for m in doctree.transform_messages]
        assert not broken, f"{caption.name}: {broken}"


def ablation_row(protein, layer, name, size, value, band, p, n_dms=50):
    """A set_ablation row: `value` of Δρ (with DMS) or ρ(clean, ablated) (without), its null band (None: no null
    drawn, n_null 0) and p."""
    from esmsae.pipeline.columns import TABLES

    row = {c: np.nan for c in TABLES["set_ablation"]}
    column = "delta_rho" if n_dms else "rho_clean_ablated"
    row.update(protein=protein, layer=layer, set=name, size=size, features="1;2", n_scored=50, n_dms=n_dms, k=8,
               d_sae=64, activations="interprot", n_null=0 if band is None else 20, positions=10, **{column: value})
    if band is not None:
        row[f"null_{column}_p05"], row[f"null_{column}_p95"], row[f"p_{column}"] = *band, p
    return row


def test_set_ablation_marks_each_kind_of_point_and_keeps_one_legend_off_the_panels(tmp_path):
    """P (with DMS): circuit below its band at layer 2 (p 0.01: filled), without a null at 4 (a cross, no band
    there); universal inside its band (open). Q (no DMS): identity, ρ(clean, ablated), open. One figure legend,
    none on a panel; each panel's title gives its sets' sizes."""
    from matplotlib.collections import PathCollection

    from esmsae.figures.ablation import set_ablation

    table = pd.DataFrame([
        ablation_row("P", 2, "circuit", 12, -0.3, (-0.1, 0.1), 0.01),
        ablation_row("P", 4, "circuit", 12, -0.2, None, 0),
        ablation_row("P", 2, "universal", 3, -0.01, (-0.1, 0.1), 0.4),
        ablation_row("P", 4, "universal", 3, 0.02, (-0.1, 0.1), 0.6),
        ablation_row("Q", 2, "identity", 5, 0.95, (0.9, 1.0), 0.3, n_dms=0),
        ablation_row("Q", 4, "identity", 5, 0.9, (0.85, 1.0), 0.2, n_dms=0)])
    task = pd.DataFrame({"protein": ["P", "P"], "layer": [2, 4], "study_forward": True, "spearman_dms_clean": 0.5,
                         "spearman_dms_recon": [0.45, 0.4], "spearman_clean_recon": 0.99})
    fig = set_ablation(table, task, tmp_path / "a.png", tmp_path / "a.pdf")
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_SIGNATURE)
    p_ax, q_ax = fig.axes[:2]
    assert p_ax.get_title() == "P\n|A|: circuit 12, universal 3" and q_ax.get_title() == "Q\n|A|: identity 5"
    assert p_ax.get_ylabel() == "Δρ with DMS (ablated − clean)" and q_ax.get_ylabel() == "ρ(clean, ablated scores)"

    def points(ax, kind):
        """(x, y) of the points drawn as `kind`: filled (significant), open, or a cross (no_null)."""
        return sorted(tuple(xy) for c in ax.collections if isinstance(c, PathCollection) and c.get_gid() == kind
                      for xy in np.asarray(c.get_offsets()).tolist())

    assert points(p_ax, "significant") == [(2.0, -0.3)]
    assert points(p_ax, "open") == [(2.0, -0.01), (4.0, 0.02)]
    assert points(p_ax, "no_null") == [(4.0, -0.2)]
    assert points(q_ax, "open") == [(2.0, 0.95), (4.0, 0.9)] and points(q_ax, "significant") == []
    at_bar = set_ablation(pd.DataFrame([ablation_row("P", 2, "top", 4, -0.3, (-0.1, 0.1), 0.05)]), task,
                          tmp_path / "b.png", tmp_path / "b.pdf")
    assert points(at_bar.axes[0], "open") == [(2.0, -0.3)]  # p exactly 0.05 is not below it: open
    crosses = [c for c in p_ax.collections if isinstance(c, PathCollection) and c.get_gid() == "no_null"]
    assert {len(c.get_paths()[0].vertices) for c in crosses if len(c.get_offsets())} == {4}  # an x, not a circle
    assert all(ax.get_legend() is None for ax in fig.axes)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["circuit", "universal", "whole stream replaced by the SAE's reconstruction", "identity",
                      "p < 0.05 against the nulls", "p ≥ 0.05", "no null (set too large for its deciles)"]
