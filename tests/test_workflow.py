"""End-to-end tests of the Snakemake workflow: the demo run, reruns, lint, config errors and a DMS run.

Snakemake runs in a temporary copy of the workflow (tests/snakemake_run.py). The full demo runs once per module
(about a minute on two cores); the other tests read its outputs or dry-run against it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from esmsae.model.esm import load_esm
from esmsae.model.sae import load_sae
from esmsae.pipeline.columns import TABLES

from .conftest import DMS_FILES, SHARED_DMS, WT, needs_dms
from .snakemake_run import (
    DEMO,
    DEMO_LAYERS,
    DRY_TIMEOUT,
    PROFILE,
    RUN_TIMEOUT,
    Run,
    copy_workflow,
    finished_rules,
    planned_jobs,
    snakemake,
    succeeded,
    with_override,
    write_override,
)

pytestmark = pytest.mark.slow

SCORE_COLUMNS = ["mutant", "position", "wt", "mut", "wt_marginal", "dms_score", "selected", "activations",
                 "wt_marginal_interprot", "wt_marginal_fair_esm", "window_start", "window_end"]
DMS_SINGLES = {"EPHB2_HUMAN": 1239, "DNJA1_HUMAN": 1216, "PR40A_HUMAN": 1163}


# -- fixtures ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    run: Run
    dry_run_after: Run

    @property
    def outdir(self) -> Path:
        return self.workdir / DEMO["outdir"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoRun:
    """The full demo, run once in a temporary copy, and the dry run right after it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo") / "workflow")
    run = succeeded(snakemake(workdir, *PROFILE, timeout=RUN_TIMEOUT), "the demo run")
    dry = snakemake(workdir, *PROFILE, "-n")
    return DemoRun(workdir, run, dry)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A copy of the workflow that never runs anything, for dry runs and config checks."""
    return copy_workflow(tmp_path_factory.mktemp("fresh") / "workflow")


# -- 1. the demo run ------------------------------------------------------------------------------
PATCH_LAYERS = DEMO["patching"]["layers"]
IG_LAYERS = DEMO["ig"]["layers"]
PATCHING_FIGURES = ["layer_effects", "controls", "delta_vs_effect"]
ATTRIBUTION_FIGURES = ["ig_concentration", "circuit_faithfulness", "universal_features", "minimal_circuit_sizes",
                       "identity_share", "attribution_agreement", "position_spread",
                       "mediated_fraction", *(f"feature_graph_{protein}" for protein in WT)]
GRAPH_LAYERS = sorted(DEMO["graph"]["layers"])
AGREEMENT_LAYERS = sorted(set(PATCH_LAYERS) & set(IG_LAYERS))
SINGLE_JOBS = ["build_demo_model", "tabulate_sae_quality", "tabulate_patching", "tabulate_circuit_sizes",
               "tabulate_attributions", "select_features", "label_features", "tabulate_concepts",
               "tabulate_identity_share", "tabulate_agreement", "tabulate_site_share", "tabulate_mediation",
               "tabulate_set_ablation", "tabulate_findings", "render_tables", "build_explorer", "all"] + [
    f"plot_{name}" for name in ["sae_fidelity", "set_ablation"] + PATCHING_FIGURES + ATTRIBUTION_FIGURES]
N_CARDS = DEMO["features"]["max_cards"]


def per_protein_layer_jobs() -> dict[str, int]:
    return {"score_mutations": len(WT), "patch_features": len(WT) * len(PATCH_LAYERS),
            "integrate_gradients": len(WT) * len(IG_LAYERS), "find_circuits": len(WT) * len(IG_LAYERS),
            "tabulate_top_features": len(WT) * len(IG_LAYERS), "characterize_features": len(DEMO_LAYERS),
            "measure_output_effects": len(DEMO_LAYERS),
            "measure_sae_quality": len(DEMO_LAYERS), "compute_atp": len(WT) * len(AGREEMENT_LAYERS),
            "patch_positions": len(WT) * len(PATCH_LAYERS), "link_layers": len(WT) * (len(GRAPH_LAYERS) - 1),
            "ablate_feature_sets": len(WT),  # one job per protein for every ablation layer
            "assemble_graphs": len(WT)}


def test_demo_runs_every_job_once(demo):
    expected = {name: 1 for name in SINGLE_JOBS} | {"train_sae": len(DEMO_LAYERS)} | per_protein_layer_jobs()
    assert planned_jobs(demo.run.output) == expected
    finished = finished_rules(demo.run.output)
    # The feature cards are known once select_features (a checkpoint) has run: one job each.
    assert {rule: finished.count(rule) for rule in set(finished)} == expected | {"draw_feature_card": N_CARDS}


def test_demo_patching_outputs(demo):
    """Every patching table: exact no-ops, baselines equal to the scores table, k and space recorded."""
    for protein in WT:
        scores = pd.read_csv(demo.outdir / "scores" / f"{protein}.csv").set_index("mutant")
        for layer in PATCH_LAYERS:
            table = pd.read_csv(demo.outdir / "patching" / f"{protein}_L{layer}.csv")
            assert set(table["control"]) == {"real", "noop", "stable", "random"}
            assert (table.loc[table["control"] == "noop", "effect"] == 0.0).all()
            assert (table["baseline_score"] - table["mutant"].map(scores["wt_marginal"])).abs().max() <= 1e-5
            assert set(table["mutant"]) <= set(scores.index[scores["selected"]])
            assert_settings(table, layer)
    for name, first in [("control_validation", ["protein", "layer", "control"]),
                        ("layer_progression", ["protein", "layer", "n_mutants"]),
                        ("top_mutations", ["protein", "mutant", "layer", "feature"])]:
        table = pd.read_csv(demo.outdir / "tables" / f"{name}.csv")
        assert list(table.columns[:len(first)]) == first and len(table) > 0
        assert {"k", "d_sae", "space"} <= set(table.columns)
    # The controls can fail: stable moves the score for most mutants, and noop never does.
    validation = pd.read_csv(demo.outdir / "tables" / "control_validation.csv").set_index("control")
    assert (validation.loc["stable", "frac_mutants_nonzero"] >= 0.5).all()
    assert (validation.loc["noop", "frac_nonzero"] == 0.0).all()


def test_demo_ig_and_circuit_outputs(demo):
    n = DEMO["mutations"]["n"]
    for protein in WT:
        for layer in IG_LAYERS:
            with np.load(demo.outdir / "ig" / f"{protein}_L{layer}.npz") as ig:
                assert ig["attribution"].shape == (n, DEMO["sae"]["train"]["d_sae"])
                assert ig["mutant"].shape == ig["total_effect"].shape == ig["completeness_error"].shape == (n,)
                assert np.median(ig["completeness_error"]) <= 0.01
                assert int(ig["steps"]) == DEMO["ig"]["steps"] and str(ig["space"]) == "latent"
                assert int(ig["k"]) == DEMO["sae"]["k"] and bool(ig["error_node"])
                assert int(ig["d_sae"]) == DEMO["sae"]["train"]["d_sae"] and int(ig["layer"]) == layer
            top = pd.read_csv(demo.outdir / "ig" / f"{protein}_L{layer}_top.csv")
            assert list(top.columns[:5]) == ["mutant", "rank", "feature", "label", "attribution"]
            assert top["label"].notna().all()
            assert_settings(top, layer)
            curves = pd.read_csv(demo.outdir / "circuits" / f"{protein}_L{layer}.csv")
            assert list(curves.columns[:7]) == ["mutant", "n_features", "feature", "patched_score",
                                                "recovered_fraction", "complement_score", "complement_fraction"]
            assert_settings(curves, layer)
            start = curves.loc[curves["n_features"] == 0]
            assert (start["recovered_fraction"] == 0.0).all() and (start["complement_fraction"] == 1.0).all()
    sizes = pd.read_csv(demo.outdir / "tables" / "circuit_sizes.csv", dtype={"features": str})
    assert list(sizes.columns[:6]) == ["protein", "layer", "mutant", "full_effect", "negligible", "n_features"]
    assert len(sizes) == len(WT) * len(IG_LAYERS) * n
    # A minimal circuit recovers the full effect within ±(1 − recover); negligible mutants get no size.
    sized = sizes.dropna(subset=["n_features"])
    assert ((sized["recovered_fraction"] - 1).abs() <= 0.1 + 1e-9).all() and len(sized) > 0
    assert sizes.loc[sizes["negligible"], "n_features"].isna().all()
    assert (sizes["negligible"] == (sizes["full_effect"].abs() < 0.05)).all()
    # Each minimal circuit is the first n features that join its curve.
    for row in sized.itertuples():
        curve = pd.read_csv(demo.outdir / "circuits" / f"{row.protein}_L{row.layer}.csv")
        joined = curve.loc[(curve["mutant"] == row.mutant) & curve["n_features"].between(1, row.n_features), "feature"]
        assert sorted(joined.astype(int)) == [int(j) for j in row.features.split(";")]
    for name in ["ig_concentration", "ig_concentration_mutants", "universal_features",
                 *[f"feature_consistency_L{x}" for x in IG_LAYERS]]:
        table = pd.read_csv(demo.outdir / "tables" / f"{name}.csv")
        assert len(table) and {"k", "d_sae", "space"} <= set(table.columns)
    concentration = pd.read_csv(demo.outdir / "tables" / "ig_concentration.csv")
    assert (concentration["n_changed_mean"] <= 2 * DEMO["sae"]["k"]).all()
    assert concentration[["gini_mean", "gini_null_mean", "k90_mean", "k90_null_mean"]].notna().all().all()


def assert_settings(table: pd.DataFrame, layer: int) -> None:
    """Every output records the layer, the SAE's k and d_sae, and the intervention space."""
    assert (table["layer"] == layer).all() and (table["k"] == DEMO["sae"]["k"]).all()
    assert (table["d_sae"] == DEMO["sae"]["train"]["d_sae"]).all() and (table["space"] == "latent").all()


def test_demo_feature_labels_cards_and_identity_share(demo):
    labels = pd.read_csv(demo.outdir / "tables" / "feature_labels.csv")
    d_sae = DEMO["sae"]["train"]["d_sae"]
    assert len(labels) == d_sae * len(DEMO_LAYERS) and labels["label"].notna().all()
    assert (labels["k"] == DEMO["sae"]["k"]).all() and (labels["d_sae"] == d_sae).all()
    names = {(r.layer, r.feature): r.label for r in labels.itertuples()}
    shown = pd.read_csv(demo.outdir / "features" / "shown.csv")
    measured = labels.set_index(["layer", "feature"]).loc[list(zip(shown["layer"], shown["feature"], strict=True))]
    # Every feature a table shows has its output effect, or was never active at a WT position.
    assert (measured["promotes"].notna() | (measured["n_active"] == 0) | measured["n_effect_positions"].isna()).all()
    assert measured["promotes"].notna().mean() > 0.8
    assert measured["label"].str.contains("; promotes ").mean() > 0.8
    # Labels stand beside feature numbers wherever they appear, and agree with feature_labels.csv.
    for table in [pd.read_csv(demo.outdir / "tables" / "top_mutations.csv"),
                  pd.read_csv(demo.outdir / "tables" / "universal_features.csv"),
                  pd.read_csv(demo.outdir / "tables" / f"feature_consistency_L{IG_LAYERS[0]}.csv"),
                  pd.read_csv(demo.outdir / "ig" / f"PR40A_HUMAN_L{IG_LAYERS[0]}_top.csv")]:
        assert len(table) and all(label == names[(layer, f)] for layer, f, label in
                                  zip(table["layer"], table["feature"], table["label"], strict=True))
    sizes = pd.read_csv(demo.outdir / "tables" / "circuit_sizes.csv").dropna(subset=["n_features"])
    for row in sizes.itertuples():
        features = [int(j) for j in str(row.features).split(";")]
        assert len(features) == row.n_features and row.labels.split(" | ") == [names[(row.layer, j)]
                                                                               for j in features]
    cards = shown[shown["card"]]
    assert len(cards) == N_CARDS
    for row in cards.itertuples():
        png = (demo.outdir / "features" / "cards" / f"L{row.layer}_F{row.feature}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20000
    share = pd.read_csv(demo.outdir / "tables" / "identity_share.csv")
    assert len(share) == len(WT) * len(IG_LAYERS) and (share["n_mutants"] == DEMO["mutations"]["n"]).all()
    assert share[["wt_identity_share_mean", "mut_identity_share_mean"]].notna().all().all()


def test_demo_agreement_and_spread_over_positions(demo):
    agreement = pd.read_csv(demo.outdir / "tables" / "attribution_agreement.csv")
    assert len(agreement) == len(WT) * len(AGREEMENT_LAYERS)
    assert (agreement["n_mutants"] == DEMO["mutations"]["n"]).all()
    per_mutant = pd.read_csv(demo.outdir / "tables" / "attribution_agreement_mutants.csv")
    for row in per_mutant.itertuples():  # the changed set is the patching table's real rows
        table = pd.read_csv(demo.outdir / "patching" / f"{row.protein}_L{row.layer}.csv")
        assert row.n_changed == ((table["mutant"] == row.mutant) & (table["control"] == "real")).sum()
    assert per_mutant[["spearman_atp", "spearman_ig"]].apply(lambda c: c.between(-1, 1)).all().all()
    assert per_mutant[["top10_atp", "top10_ig"]].apply(lambda c: c.between(0, 1)).all().all()  # shares
    for protein in WT:
        for layer in PATCH_LAYERS:
            rows = pd.read_csv(demo.outdir / "positions" / f"{protein}_L{layer}.csv")
            summary = pd.read_csv(demo.outdir / "positions" / f"{protein}_L{layer}_summary.csv")
            assert list(rows.columns) == TABLES["positions"]
            assert len(rows) == DEMO["mutations"]["n"] * (len(WT[protein]) + 2)
            assert list(summary.columns) == TABLES["positions_summary"]
            sites = rows[rows["position"] == rows["mutant"].str[1:-1].astype(int)]
            assert (sites.set_index("mutant")["effect"] - summary.set_index("mutant")["site_effect"]).abs().max() < 1e-9
    share = pd.read_csv(demo.outdir / "tables" / "site_share.csv")
    assert len(share) == len(WT) * len(PATCH_LAYERS)


def test_demo_graphs_for_every_mutant(demo):
    import json
    import xml.etree.ElementTree as ElementTree

    labels = pd.read_csv(demo.outdir / "tables" / "feature_labels.csv")
    names = {(r.layer, r.feature): r.label for r in labels.itertuples()}
    for protein in WT:
        scores = pd.read_csv(demo.outdir / "scores" / f"{protein}.csv")
        for mutant in scores.loc[scores["selected"], "mutant"]:
            graph = json.loads((demo.outdir / "graph" / protein / f"{protein}_{mutant}.json").read_text())
            assert graph["mutant"] == mutant and 0 < len(graph["edges"]) <= DEMO["graph"].get("top_edges", 20)
            assert {n["layer"] for n in graph["nodes"]} <= set(GRAPH_LAYERS)
            assert all(n["label"] == names[(n["layer"], n["feature"])] for n in graph["nodes"])
            root = ElementTree.parse(demo.outdir / "graph" / protein / f"{protein}_{mutant}.graphml").getroot()
            assert len(root.findall(".//{http://graphml.graphdrawing.org/xmlns}edge")) == len(graph["edges"])
        aggregate = pd.read_csv(demo.outdir / "graph" / f"{protein}_aggregate.csv")
        assert aggregate["n_mutants"].max() >= 2  # edges recur across mutants
    shares = pd.read_csv(demo.outdir / "tables" / "mediated_shares.csv")
    assert len(shares) == len(WT) * (len(GRAPH_LAYERS) - 1)
    assert shares["atp_checked"].min() > 0 and shares["mediated_fraction_mean"].between(0, 10).all()
    assert shares["null_fraction_mean"].notna().all() and shares["frac_mutants_above_null"].between(0, 1).all()
    assert (shares["layer_down"] - shares["layer_up"]).isin(np.diff(GRAPH_LAYERS)).all()
    assert {"k", "d_sae", "k_down", "d_sae_down"} <= set(shares.columns) and set(shares["space"]) == {"latent"}


@pytest.mark.parametrize("name", PATCHING_FIGURES + ATTRIBUTION_FIGURES)
def test_demo_figures_exist(demo, name):
    png = (demo.outdir / "figures" / f"{name}.png").read_bytes()
    pdf = (demo.outdir / "figures" / f"{name}.pdf").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000


def test_one_figure_rebuilds_alone(demo):
    target = "results/demo/figures/controls.png"
    (demo.workdir / target).unlink()
    plan = succeeded(snakemake(demo.workdir, *PROFILE, target, "-n"), "dry run for one figure")
    assert planned_jobs(plan.output) == {"plot_controls": 1}
    succeeded(snakemake(demo.workdir, *PROFILE, target, timeout=RUN_TIMEOUT), "rebuilding one figure")
    assert (demo.workdir / target).exists()


def test_report_contains_the_figures(demo):
    report = demo.workdir / "report.html"
    succeeded(snakemake(demo.workdir, *PROFILE, "--report", str(report), timeout=RUN_TIMEOUT), "the report")
    html = report.read_text(errors="replace")
    for name in PATCHING_FIGURES + ATTRIBUTION_FIGURES:
        assert f"{name}.png" in html
    assert "Feature cards" in html and html.count("features/cards/L") >= N_CARDS
    # The first page states the findings, each linked to its figure; the tables page is in it too.
    findings = pd.read_csv(demo.outdir / "tables" / "findings.csv")
    assert "Findings" in html and "tables.html" in html
    for verdict in set(findings["verdict"]):
        assert verdict in html
    assert "Every number in this report reads the SAEs on the" in html and "sae.activations" in html
    # the pooled claims listed, the per-protein ones counted (a list of every protein's claims would not scale),
    # and the first page kept at the top of its pane (Snakemake centres it: a tall page lost its title)
    assert "Over all proteins (the study" in html and f"Per protein ({len(WT)} proteins," in html
    assert ".h-screen.items-center { align-items: flex-start; }" in html


# what the demo's SAEs read: its config leaves sae.activations at the default
FORWARD = DEMO.get("sae", {}).get("activations", "interprot")
NOT_DATA = ("logs", "benchmarks", "model", "sae", "report")  # run records, weights, the rendered tables page
FORWARDS_COMPARED = {"sae_quality", "sae_task_fidelity", "dms_correlation"}  # tables of both forwards


def test_every_output_records_the_forward(demo):
    """Every table (CSV), array (npz), graph (JSON, GraphML) and the explorer's data say which forward the SAEs
    read: the study's, and in the tables that compare the two forwards both, the study's marked."""
    import json
    from xml.etree import ElementTree

    seen: dict[str, int] = {}
    for path in sorted(demo.outdir.rglob("*")):
        relative = path.relative_to(demo.outdir)
        if not path.is_file() or relative.parts[0] in NOT_DATA:
            continue
        kind = path.suffix
        if kind == ".csv":
            table = pd.read_csv(path, dtype={"activations": str})
            assert "activations" in table.columns, relative
            if relative.parts[0] == "sae_quality" or path.stem in FORWARDS_COMPARED:  # both, side by side
                assert set(table["activations"]) == {"interprot", "fair-esm"}, relative
                if "study_forward" in table.columns:
                    assert set(table.loc[table["study_forward"].astype(bool), "activations"]) == {FORWARD}, relative
            elif len(table):
                assert set(table["activations"]) == {FORWARD}, relative
        elif kind == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                assert str(arrays["activations"]) == FORWARD, relative
        elif kind == ".json":
            assert json.loads(path.read_text())["activations"] == FORWARD, relative
        elif kind == ".graphml":
            ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
            own = ElementTree.parse(path).getroot().find("g:graph", ns).findall("g:data", ns)
            assert {d.get("key"): d.text for d in own}["activations"] == FORWARD, relative
        elif path.name == "data.js":
            data = json.loads(path.read_text().removeprefix("window.EXPLORER = ").rstrip(";\n"))
            assert data["activations"] == FORWARD
        else:
            continue
        seen[kind if path.name != "data.js" else "data.js"] = seen.get(kind, 0) + 1
    assert set(seen) == {".csv", ".npz", ".json", ".graphml", "data.js"}  # every kind of output was looked at


def test_demo_findings_and_explorer(demo):
    """Every claim has a verdict of the three kinds; the explorer holds every protein's selected mutants and a
    page for every graph node."""
    import json

    findings = pd.read_csv(demo.outdir / "tables" / "findings.csv")
    assert list(findings.columns) == TABLES["findings"]
    assert set(findings["verdict"]) <= {"supported", "not supported", "indistinguishable from null"}
    assert {"peak_layer", "top20_share", "single_feature_effects", "universal_features",
            "mediated_fraction"} <= set(findings["claim"])
    assert set(findings["scope"]) == {*WT, "all"}
    site = demo.outdir / "explorer"
    index = json.loads((site / "data.js").read_text().removeprefix("window.EXPLORER = ").rstrip(";\n"))
    parts = [json.loads(p.read_text().removeprefix("window.EXPLORER_PART(").rstrip(");\n"))
             for p in sorted((site / "data").iterdir())]
    assert set(index["proteins"]) == set(WT)
    assert {p["name"]: index["proteins"][p["name"]]["file"] for p in parts if p["kind"] == "protein"} == {
        name: entry["file"] for name, entry in index["proteins"].items()}  # every protein's part is there
    features = {key for p in parts if p["kind"] == "features" for key in p["features"]}
    for part in (p for p in parts if p["kind"] == "protein"):
        scores = pd.read_csv(demo.outdir / "scores" / f"{part['name']}.csv")
        assert len(part["mutants"]) == index["proteins"][part["name"]]["n_mutants"] == int(scores["selected"].sum())
        nodes = {n["id"] for g in part["graphs"].values() for n in g["nodes"]}
        assert nodes and nodes <= features  # a page for every graph node


@pytest.mark.parametrize("protein", list(WT))
def test_demo_scores_table(demo, protein):
    wt = WT[protein]
    table = pd.read_csv(demo.outdir / "scores" / f"{protein}.csv")
    assert list(table.columns) == SCORE_COLUMNS
    assert len(table) == 19 * len(wt)
    # short proteins are scored whole: the window is every token, BOS to EOS
    assert set(zip(table["window_start"], table["window_end"], strict=True)) == {(0, len(wt) + 2)}
    # Every in-silico single substitution once, named after the WT residue it replaces.
    assert table["mutant"].is_unique
    sites = list(zip(table["wt"], table["position"], table["mut"], strict=True))
    assert all(wt[pos - 1] == w != m for w, pos, m in sites)
    assert list(table["mutant"]) == [f"{w}{pos}{m}" for w, pos, m in sites]
    assert table["wt_marginal"].notna().all()
    assert table["dms_score"].isna().all()  # the demo has no assay files

    n = DEMO["mutations"]["n"]
    selected = table["selected"].astype(bool)
    assert selected.sum() == n
    # The n lowest WT-marginal scores: none left out scores below one taken.
    assert table.loc[selected, "wt_marginal"].max() <= table.loc[~selected, "wt_marginal"].min()
    assert set(table.loc[selected, "mutant"]) == set(table.nsmallest(n, "wt_marginal")["mutant"])


def test_demo_sae_quality_table(demo):
    """Both forwards per layer, the study's (interprot: the demo trains its SAEs on it) first and the better
    one: its SAEs reconstruct their own forward's activations with a higher FVE and a lower KL."""
    table = pd.read_csv(demo.outdir / "tables" / "sae_quality.csv")
    assert list(table.columns) == TABLES["sae_quality"]
    assert list(table["layer"]) == [layer for layer in DEMO_LAYERS for _ in range(2)]
    assert table["activations"].tolist() == ["interprot", "fair-esm"] * len(DEMO_LAYERS)
    assert (table["d_sae"] == DEMO["sae"]["train"]["d_sae"]).all()
    assert (table["k"] == DEMO["sae"]["k"]).all()
    assert (table["fve"] > 0.5).all(), table
    assert (table["mean_l0"] <= table["k"]).all(), table
    assert table["dead_fraction"].between(0, 1).all()
    assert (table["n_positions"] > 0).all() and (table["n_proteins"] == len(WT)).all()
    own, other = table[table["study_forward"]].set_index("layer"), table[~table["study_forward"]].set_index("layer")
    assert (own["fve"] > other["fve"]).all() and (own["kl"] < other["kl"]).all()
    assert (table["fve_half_k"] < table["fve"]).all() and table["wrong_k"].isna().all()
    task = pd.read_csv(demo.outdir / "tables" / "sae_task_fidelity.csv")
    assert len(task) == 2 * len(WT) * len(DEMO_LAYERS) and task["spearman_dms_clean"].isna().all()


def test_demo_logs_and_benchmarks(demo):
    jobs = (["build_demo_model", "tabulate_sae_quality"] + [f"train_sae/L{layer}" for layer in DEMO_LAYERS]
            + [f"measure_sae_quality/L{layer}" for layer in DEMO_LAYERS]
            + [f"score_mutations/{protein}" for protein in WT])
    for job in jobs:
        log = demo.outdir / "logs" / f"{job}.log"
        benchmark = demo.outdir / "benchmarks" / f"{job}.tsv"
        assert log.is_file() and log.stat().st_size > 0, f"no log for {job}"
        assert benchmark.is_file() and benchmark.read_text().startswith("s\t"), f"no benchmark for {job}"


def test_demo_model_and_saes_load(demo):
    model = load_esm(demo.workdir / DEMO["esm_checkpoint"])
    assert model.num_layers == DEMO["demo"]["layers"]
    assert model.embed_dim == DEMO["demo"]["embed_dim"]
    for layer in DEMO_LAYERS:
        path = demo.workdir / DEMO["sae"]["dir"] / DEMO["sae"]["pattern"].format(layer=layer)
        sae = load_sae(path, DEMO["sae"]["k"], layer=layer, d_in=model.embed_dim)
        assert sae.k == DEMO["sae"]["k"]
        assert sae.info.d_sae == DEMO["sae"]["train"]["d_sae"]


# -- 2. a finished run has nothing left to do -----------------------------------------------------
def test_nothing_to_do_after_the_run(demo):
    dry = succeeded(demo.dry_run_after, "the dry run after the demo")
    assert "Nothing to be done" in dry.output, dry.output[-3000:]
    assert planned_jobs(dry.output) == {}


@pytest.mark.parametrize("change", [
    ("--config", "batch_size=64"),
    ("--config", "batch_size=1"),
    ("--config", "device=auto"),
    ("--config", "esm_trust_pickle=True"),
    ("--set-threads", "patch_features=2", "integrate_gradients=2", "find_circuits=2"),
], ids=["batch_size-64", "batch_size-1", "device", "trust_pickle", "threads"])
def test_runtime_knobs_never_rerun_a_job(demo, change):
    dry = succeeded(snakemake(demo.workdir, *PROFILE, "-n", *change), f"a dry run with {change}")
    assert "Nothing to be done" in dry.output, dry.output[-3000:]


def test_science_settings_rerun_what_they_change(demo):
    """The control for the test above: a setting that changes numbers plans the jobs it changes, no others."""
    dry = succeeded(snakemake(demo.workdir, *PROFILE, "-n", "--config", "space=pre"), "a dry run with space=pre")
    planned = planned_jobs(dry.output)
    assert planned["patch_features"] == len(WT) * len(PATCH_LAYERS)
    assert planned["integrate_gradients"] == planned["find_circuits"] == len(WT) * len(IG_LAYERS)
    assert not {"build_demo_model", "train_sae", "score_mutations", "measure_sae_quality"} & set(planned)


def test_circuit_thresholds_rerun_no_model_job(demo, tmp_path):
    """circuits.recover and min_effect only read the measured curves: the tables, checkpoint and figures
    rerun, and what they feed, but not find_circuits."""
    override = write_override(tmp_path, "thresholds.yaml", {"circuits": {"recover": 0.8, "min_effect": 0.02}})
    planned = planned_jobs(succeeded(snakemake(demo.workdir, *with_override(override), "-n"),
                                     "a dry run with other circuit thresholds").output)
    assert {"tabulate_circuit_sizes", "select_features", "plot_circuit_faithfulness"} <= set(planned)
    assert not {"find_circuits", "integrate_gradients", "patch_features", "score_mutations"} & set(planned)


# -- 3. rebuild only what is needed, deterministically -------------------------------------------
def test_deleted_table_rebuilds_alone_and_identically(demo):
    target = f"{DEMO['outdir']}/scores/PR40A_HUMAN.csv"
    path = demo.workdir / target
    before = path.read_bytes()
    path.unlink()

    dry = succeeded(snakemake(demo.workdir, *PROFILE, "-n", target), "the dry run for one table")
    assert planned_jobs(dry.output) == {"score_mutations": 1}, dry.output[-3000:]

    run = succeeded(snakemake(demo.workdir, *PROFILE, target, timeout=RUN_TIMEOUT), "the rebuild of one table")
    assert finished_rules(run.output) == ["score_mutations"], run.output[-3000:]
    assert "wildcards: protein=PR40A_HUMAN" in run.output
    assert path.read_bytes() == before, "score_mutations is not deterministic"


# -- 4. lint --------------------------------------------------------------------------------------
# The one finding left on purpose: rules carry no conda directive, because every rule imports the
# esmsae package, which an environment built by --sdm conda would lack (README "Software").
NO_CONDA = "* Specify a conda environment or container for each rule.:"


def test_lint_is_clean(fresh):
    run = snakemake(fresh, *PROFILE, "--lint")
    assert "Traceback" not in run.output and "Error" not in run.output, run.output[-5000:]
    findings = [line.strip() for line in run.output.splitlines() if line.strip().startswith("* ")]
    assert findings and all(f == NO_CONDA for f in findings), "snakemake --lint found:\n" + run.output[-5000:]
    headers = [line for line in run.output.splitlines() if line.startswith("Lints for rule")]
    assert len(headers) == len(findings)  # one finding per rule, and it is that one
    assert run.returncode == 1  # --lint exits 1 on any finding


def test_snakefmt_is_clean():
    """The Snakemake catalog's formatter (also fixes the order of a rule's directives)."""
    from .snakemake_run import REPO

    done = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "."], cwd=REPO, capture_output=True,
                          text=True, timeout=DRY_TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# -- 5. config errors name the key ----------------------------------------------------------------
@pytest.mark.parametrize(("override", "key"), [
    ({"mutations": {"bogus": 1}}, "'bogus'"),
    ({"mutations": {"n": "many"}}, "['n']"),
    ({"sae": {"k": 0}}, "['k']"),
], ids=["unknown-key", "wrong-type", "k-zero"])
def test_config_error_names_the_key(fresh, tmp_path, override, key):
    run = snakemake(fresh, *with_override(write_override(tmp_path, "bad.yaml", override)), "-n")
    assert run.returncode != 0, f"{override} was accepted:\n{run.output[-3000:]}"
    assert "Error validating config file" in run.output, run.output[-3000:]
    assert key in run.output, run.output[-3000:]
    assert "Traceback" not in run.output and "AttributeError" not in run.output, run.output[-3000:]


def test_config_override_is_merged(fresh, tmp_path):
    """The control for the test above: a valid override on top of the demo config plans the demo."""
    run = succeeded(snakemake(fresh, *with_override(write_override(tmp_path, "ok.yaml", {"mutations": {"n": 3}})),
                              "-n"), "a dry run with a valid override")
    assert planned_jobs(run.output)["score_mutations"] == len(WT)


def test_config_without_demo_or_training_plans(demo, fresh, tmp_path):
    """The study's shape (`demo: null`, `sae.train: null`, as in config.yaml) on the demo's files."""
    override = {
        "outdir": "results/study_shape",
        "esm_checkpoint": str(demo.workdir / DEMO["esm_checkpoint"]),
        "demo": None,
        "sae": {"dir": str(demo.workdir / DEMO["sae"]["dir"]), "train": None},
    }
    run = succeeded(snakemake(fresh, *with_override(write_override(tmp_path, "study.yaml", override)), "-n"),
                    "a dry run with demo and sae.train null")
    expected = {name: 1 for name in SINGLE_JOBS if name != "build_demo_model"} | per_protein_layer_jobs()
    assert planned_jobs(run.output) == expected


# -- 6. a run on the ProteinGym assays, with double mutants and a fourth protein ----------------
FOURTH = "TEST4_SYNTH"
FOURTH_SEQ = "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYG"


def write_fourth_assay(path: Path) -> Path:
    """A small assay in ProteinGym's format for a protein the study config never mentions."""
    rng = np.random.default_rng(4)
    rows = []
    for pos in range(2, len(FOURTH_SEQ) + 1, 3):
        wt = FOURTH_SEQ[pos - 1]
        mut = "A" if wt != "A" else "G"
        rows.append((f"{wt}{pos}{mut}", FOURTH_SEQ[:pos - 1] + mut + FOURTH_SEQ[pos:]))
    for (m1, s1), (m2, _) in zip(rows[:-1:2], rows[1::2], strict=True):
        p2 = int(m2[1:-1])
        rows.append((f"{m1}:{m2}", s1[:p2 - 1] + m2[-1] + s1[p2:]))
    scores = rng.normal(-1.0, 1.0, len(rows))
    pd.DataFrame({"mutant": [m for m, _ in rows], "mutated_sequence": [s for _, s in rows],
                  "DMS_score": scores, "DMS_score_bin": (scores > -1).astype(int)}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def dms_run(tmp_path_factory) -> Path:
    """The demo model with the real assays (singles and multi-site), plus a fourth protein from config only."""
    workdir = copy_workflow(tmp_path_factory.mktemp("dms") / "workflow")
    fourth = write_fourth_assay(workdir / "fourth_assay.csv")
    override = {
        "outdir": "results/dms",
        "proteins": {name: {"dms": str(SHARED_DMS / DMS_FILES[name])} for name in WT}
        | {FOURTH: {"wt_seq": FOURTH_SEQ, "dms": str(fourth), "max_dms": 0.0}},
        "mutations": {"source": "dms", "max_dms": -1.5, "n": 5, "seed": 0, "multi": True},
    }
    path = write_override(workdir, "dms.yaml", override)
    succeeded(snakemake(workdir, *with_override(path), timeout=RUN_TIMEOUT), "the DMS run")
    return workdir / "results" / "dms"


@needs_dms
@pytest.mark.parametrize("protein", list(WT))
def test_dms_scores_table(dms_run, protein):
    table = pd.read_csv(dms_run / "scores" / f"{protein}.csv", dtype={"position": str})
    assay = pd.read_csv(SHARED_DMS / DMS_FILES[protein])
    assert list(table.columns) == SCORE_COLUMNS
    assert len(table) == len(assay)  # every substitution, single and multi-site (mutations.multi)
    assert (~table["mutant"].str.contains(":")).sum() == DMS_SINGLES[protein]
    assert set(table["mutant"]) == set(assay["mutant"])
    assert table["wt_marginal"].notna().all() and table["dms_score"].notna().all()
    selected = table[table["selected"].astype(bool)]
    assert len(selected) == 5
    assert (selected["dms_score"] <= -1.5).all(), selected


@needs_dms
def test_dms_correlation_table(dms_run):
    """Both forwards' ρ for singles and all rows, each recomputed from the scores table's own columns."""
    table = pd.read_csv(dms_run / "tables" / "dms_correlation.csv")
    assert list(table.columns) == TABLES["dms_correlation"]
    assert sorted(table["protein"]) == sorted(4 * [*WT, FOURTH])
    assert set(table.loc[table["study_forward"], "activations"]) == {"interprot"}
    for row in table.itertuples():
        scores = pd.read_csv(dms_run / "scores" / f"{row.protein}.csv")
        if row.rows == "singles":
            scores = scores[~scores["mutant"].str.contains(":")]
        column = "wt_marginal_" + row.activations.replace("-", "_")
        expected = stats.spearmanr(scores[column], scores["dms_score"])
        assert row.n == len(scores)
        assert abs(row.spearman - expected.statistic) <= 1e-12
        assert row.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
        assert scores["wt_marginal"].equals(scores["wt_marginal_interprot"])


@needs_dms
def test_multi_site_mutants_end_to_end(dms_run):
    """Selected double mutants are scored as the sum over sites, patched at both sites, and IG adds up."""
    doubles = 0
    for protein in [*WT, FOURTH]:
        scores = pd.read_csv(dms_run / "scores" / f"{protein}.csv", dtype={"position": str})
        chosen = scores[scores["selected"].astype(bool)]
        for layer in DEMO["patching"]["layers"]:
            table = pd.read_csv(dms_run / "patching" / f"{protein}_L{layer}.csv", dtype={"position": str})
            assert (table.loc[table["control"] == "noop", "effect"] == 0.0).all()
            for row in chosen.itertuples():
                rows = table[table["mutant"] == row.mutant]
                assert (rows["position"] == row.position).all()
                assert (rows["baseline_score"] - row.wt_marginal).abs().max() <= 1e-5
        doubles += int(chosen["mutant"].str.contains(":").sum())
        for layer in DEMO["ig"]["layers"]:
            with np.load(dms_run / "ig" / f"{protein}_L{layer}.npz") as ig:
                assert np.median(ig["completeness_error"]) <= 0.01
    assert doubles > 0, "no multi-site mutant was selected; the test proves nothing"


@needs_dms
def test_fourth_protein_from_config_only(dms_run):
    """A protein added only through the config gets every per-protein output."""
    assert (dms_run / "scores" / f"{FOURTH}.csv").exists()
    for layer in DEMO["patching"]["layers"]:
        assert (dms_run / "patching" / f"{FOURTH}_L{layer}.csv").stat().st_size > 0
    for layer in DEMO["ig"]["layers"]:
        assert (dms_run / "ig" / f"{FOURTH}_L{layer}.npz").exists()
        assert (dms_run / "circuits" / f"{FOURTH}_L{layer}.csv").exists()
    sizes = pd.read_csv(dms_run / "tables" / "circuit_sizes.csv")
    assert FOURTH in set(sizes["protein"])


@needs_dms
def test_per_protein_figures_draw_three_of_four_proteins(dms_run):
    """Four proteins, figures.n_proteins 3: the per-protein figures draw the three with the most selected
    mutants (every protein has n = 5; ties in config order, so the fourth is left out), pooled figures and
    the tables keep all four."""
    graphs = sorted(p.name for p in (dms_run / "figures").glob("feature_graph_*.png"))
    assert graphs == sorted(f"feature_graph_{protein}.png" for protein in WT)
    spread_log = (dms_run / "logs" / "figures" / "position_spread.log").read_text()
    drawn = re.search(r"position_spread: drawn for 3 proteins \(figures\.proteins\): (.*)", spread_log)
    assert drawn and set(drawn.group(1).split(", ")) == set(WT), spread_log
    assert "figures.proteins" not in (dms_run / "logs" / "figures" / "ig_concentration.log").read_text()
    assert FOURTH in set(pd.read_csv(dms_run / "tables" / "site_share.csv")["protein"])


def test_bad_assay_row_fails_the_job_with_one_clear_line(demo, tmp_path):
    """Through Snakemake: the job fails naming file and row, and leaves no output."""
    seq = WT["EPHB2_HUMAN"]
    assay = tmp_path / "bad_assay.csv"
    good = seq[:4] + "A" + seq[5:]
    assay.write_text("mutant,mutated_sequence,DMS_score\n"
                     f"{seq[4]}5A,{good},-2.0\n"
                     f"Q5A,{good},-1.0\n")
    override = write_override(demo.workdir, "bad.yaml", {"proteins": {"BADP": {"wt_seq": seq, "dms": str(assay)}}})
    target = "results/demo/scores/BADP.csv"
    run = snakemake(demo.workdir, target, *with_override(override), timeout=RUN_TIMEOUT)
    assert run.returncode != 0
    assert f"error: {assay}, row 2 ('Q5A')" in run.output, run.output[-3000:]
    assert not (demo.workdir / target).exists()
