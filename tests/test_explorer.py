"""The explorer and the tables page in a real browser: headless Chromium opens them from file://, with no console
error and no network request; a click on a graph node opens that feature, and the slider hides edges."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from esmsae.report.explorer import build_explorer, clean
from esmsae.report.tables_page import tables_page

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                   reason="no Chromium and chromedriver (Debian packages chromium, chromium-driver)")


def graph() -> dict:
    """A hand-made graph: two layers, three nodes, edges of |M| 0.1, 0.5 and 1.0."""
    nodes = [{"id": "L2_F3", "layer": 2, "feature": 3, "label": "L-identity", "effect": -0.2},
             {"id": "L2_F7", "layer": 2, "feature": 7, "label": "broad (top V, F1 0.12); promotes K; a",
              "effect": 0.1},  # "F7 " and the label: exactly 40 characters, one line
             {"id": "L4_F1", "layer": 4, "feature": 1, "effect": -0.3,
              "label": "K/R-enriched (F1 0.41); promotes K; Disordered region (F1 0.55); Coiled coil (F1 0.52)"}]
    edges = [{"source": "L2_F3", "target": "L4_F1", "w": 0.4, "M": -1.0, "linear": -0.9},
             {"source": "L2_F7", "target": "L4_F1", "w": -0.2, "M": 0.5, "linear": 0.4},
             {"source": "L2_F3", "target": "L4_F1", "w": 0.1, "M": 0.1, "linear": 0.1}]
    return {"protein": "P", "mutant": "A5C", "nodes": nodes, "edges": edges}


def feature(key: str, layer: int, number: int, label: str) -> dict:
    return {"id": key, "layer": layer, "feature": number, "label": label, "top_residue": "L", "f1": 0.9,
            "frequency": 0.05, "n_active": 10, "identity": True, "top_concept": "Helix", "promotes": "L",
            "concepts": [{"concept": "Helix", "f1": 0.6, "precision": 0.5, "recall": 0.75, "hits": 3}],
            "examples": [{"rank": 1, "record": "P", "position": 5, "activation": 1.5, "window": "MKVLAGG",
                          "window_start": 2, "window_activations": "0;0;0.5;1.5;0;0;0"}],
            "mutants": [{"protein": "P", "mutant": "A5C", "rank": 1, "attribution": -0.4}],
            "neighbours": [], "card": None}


def site(tmp_path: Path) -> Path:
    data = clean({"title": "test", "activations": "fair-esm",
                  "layers": {"graph": [2, 4], "ig": [2], "positions": [2], "patching": [2]},
                  "proteins": {"P": {"mutants": [{"mutant": "A5C", "score": -1.5, "dms": float("nan"),
                                                  "full_effect": {2: -0.3}, "circuit": {2: 3},
                                                  "site_share": {2: 0.8}, "graph": True}]}},
                  "graphs": {"P/A5C": graph()},
                  "features": {k: feature(k, int(k[1]), int(k.split("F")[1]), n["label"])
                               for k, n in ((n["id"], n) for n in graph()["nodes"])},
                  "findings": [{"claim": "peak_layer", "scope": "P", "verdict": "supported", "p": 0.01,
                                "sentence": "P: peak at layer 2"}]})
    build_explorer(data, {}, tmp_path / "explorer")
    return tmp_path / "explorer" / "index.html"


def test_the_site_is_self_contained(tmp_path):
    index = site(tmp_path)
    assert sorted(p.name for p in index.parent.iterdir()) == ["app.js", "cards", "data", "data.js", "index.html",
                                                              "style.css"]
    text = "".join(p.read_text() for p in index.parent.rglob("*") if p.is_file())
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    data = json.loads(index.with_name("data.js").read_text().removeprefix("window.EXPLORER = ").rstrip(";\n"))
    assert data["proteins"] == {"P": {"file": "data/p0.js", "n_mutants": 1, "n_graphs": 1}}
    assert data["feature_files"] == {"L2_B0": "data/f0.js", "L4_B0": "data/f1.js"} and data["activations"] == "fair-esm"
    assert sorted(p.name for p in (index.parent / "data").iterdir()) == ["f0.js", "f1.js", "p0.js"]
    part = json.loads((index.parent / "data" / "p0.js").read_text().removeprefix("window.EXPLORER_PART(")
                      .rstrip(");\n"))
    assert part["name"] == "P" and list(part["graphs"]) == ["A5C"]
    assert part["mutants"][0]["dms"] is None  # NaN travels as null, never as an invalid NaN


def test_a_feature_block_ends_at_255_and_the_next_begins_at_256():
    from esmsae.report.explorer import split

    data = {"title": "t", "activations": "interprot", "layers": {}, "findings": [], "proteins": {}, "graphs": {},
            "features": {k: feature(k, 2, n, "") for k, n in (("L2_F0", 0), ("L2_F255", 255), ("L2_F256", 256))}}
    index, parts = split(data)
    assert {block: sorted(parts[file]["features"]) for block, file in index["feature_files"].items()} == {
        "L2_B0": ["L2_F0", "L2_F255"], "L2_B1": ["L2_F256"]}


def test_features_are_split_by_layer_and_block_and_a_rebuild_leaves_no_old_part(tmp_path):
    """Features 3 and 300 of layer 2 fall in blocks 0 and 1 (256 per block), layer 4's feature 1 in its block 0;
    two proteins, two protein parts. Built again with one protein, the folder holds only the new parts."""
    from esmsae.report.explorer import FEATURE_BLOCK, split

    assert FEATURE_BLOCK == 256
    data = {"title": "t", "activations": "interprot", "layers": {}, "findings": [],
            "proteins": {"P": {"mutants": [{"mutant": "A5C", "graph": True}]}, "Q": {"mutants": []}},
            "graphs": {"P/A5C": graph()},
            "features": {k: feature(k, layer, number, "") for k, layer, number in
                         (("L2_F3", 2, 3), ("L2_F300", 2, 300), ("L4_F1", 4, 1))}}
    index, parts = split(data)
    assert index["feature_files"] == {"L2_B0": "data/f0.js", "L2_B1": "data/f1.js", "L4_B0": "data/f2.js"}
    assert {file: sorted(p["features"]) for file, p in parts.items() if p["kind"] == "features"} == {
        "data/f0.js": ["L2_F3"], "data/f1.js": ["L2_F300"], "data/f2.js": ["L4_F1"]}
    assert index["proteins"]["Q"] == {"file": "data/p1.js", "n_mutants": 0, "n_graphs": 0}
    assert parts["data/p1.js"]["graphs"] == {} and list(parts["data/p0.js"]["graphs"]) == ["A5C"]
    build_explorer(data, {}, tmp_path / "site")
    assert len(list((tmp_path / "site" / "data").iterdir())) == 5
    build_explorer(data | {"proteins": {"P": data["proteins"]["P"]}, "features": {}}, {}, tmp_path / "site")
    assert sorted(p.name for p in (tmp_path / "site" / "data").iterdir()) == ["p0.js"]
    assert not [p for p in (tmp_path / "site").iterdir() if p.name.startswith(".data-")]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "site" / "data").stat().st_mode & 0o777 == 0o777 & ~umask  # readable as the cards are


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def requested(driver) -> set[str]:
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def wait_for(driver, script: str, timeout: float = 10.0):
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


@needs_browser
def test_explorer_from_a_mutant_graph_to_a_feature(tmp_path, browser):
    from selenium.webdriver.common.by import By

    index = site(tmp_path)
    browser.get(index.as_uri() + "#/mutant/P/A5C")
    wait_for(browser, "return document.querySelectorAll('svg .edge').length")
    edges = browser.find_elements(By.CSS_SELECTOR, "svg .edge")
    assert len(edges) == 3 and len(browser.find_elements(By.CSS_SELECTOR, "svg .node")) == 3
    hover = [e.find_element(By.TAG_NAME, "title").get_attribute("textContent") for e in edges]
    assert any("w = 0.4" in t and "M = -1" in t for t in hover)
    visible = "return document.querySelectorAll('svg .edge:not(.hidden)').length"
    assert browser.execute_script(visible) == 3
    browser.execute_script("const s = document.getElementById('threshold'); s.value = 0.3;"
                           "s.dispatchEvent(new Event('input'));")
    assert browser.execute_script(visible) == 2   # |M| 0.1 < 0.3 · 1.0 hidden
    browser.execute_script("const s = document.getElementById('threshold'); s.value = 0.6;"
                           "s.dispatchEvent(new Event('input'));")
    assert browser.execute_script(visible) == 1   # only |M| = 1.0 left
    spans = "return Array.from(document.querySelectorAll(\"svg .node[data-id='%s'] tspan\")).map(s => s.textContent)"
    assert browser.execute_script(spans % "L2_F3") == ["F3 L-identity"]  # a short label: one line
    assert browser.execute_script(spans % "L2_F7") == ["F7 broad (top V, F1 0.12); promotes K; a"]  # at the bar
    # a long one: two lines of at most 40 characters, broken between words, the rest cut with an ellipsis
    assert browser.execute_script(spans % "L4_F1") == ["F1 K/R-enriched (F1 0.41); promotes K;",
                                                       "Disordered region (F1 0.55); Coiled coi…"]
    browser.find_element(By.CSS_SELECTOR, "svg .node[data-id='L4_F1'] circle").click()
    title = wait_for(browser, "const t = document.getElementById('feature-title'); return t && t.textContent")
    assert browser.execute_script("return location.hash") == "#/feature/L4_F1" and title == "Layer 4, feature 1"
    assert "Helix" in browser.find_element(By.ID, "page").text and "MKVLAGG" in browser.find_element(By.ID, "page").text
    browser.get(index.as_uri() + "#/")
    home = wait_for(browser, "return document.getElementById('page').textContent")
    assert "Every number here reads the SAEs on the fair-esm forward (config key sae.activations)." in home
    browser.get(index.as_uri() + "#/protein/P")
    wait_for(browser, "return document.querySelector('table.sortable')")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert {url.split(":")[0] for url in requested(browser)} <= {"file"}


@needs_browser
def test_the_tables_page_sorts_and_filters_offline(tmp_path, browser):
    page = tmp_path / "tables.html"
    page.write_text(tables_page({"a": pd.DataFrame({"x": [3, 1, 2], "y": ["c", "a", "b"]}),
                                 "b": pd.DataFrame({"z": range(40)})}, "T"), encoding="utf-8")
    browser.get(page.as_uri())
    assert wait_for(browser, "return document.querySelectorAll('table.dataTable').length === 2")
    first = "return document.querySelector('#a table.dataTable tbody tr td').textContent"
    assert browser.execute_script(first) == "3"  # in file order until sorted
    browser.execute_script("document.querySelector('#a table.dataTable thead th .dt-column-order').click()")
    assert wait_for(browser, first + " === '1'")  # sorted on x
    rows = "return document.querySelectorAll('#b table.dataTable tbody tr').length"
    assert browser.execute_script(rows) == 15  # a page of 15 of the 40 rows
    browser.execute_script("const s = document.querySelector('#b input[type=search]'); s.value = '39';"
                           "s.dispatchEvent(new Event('input', {bubbles: true}));")
    assert wait_for(browser, rows + " === 1")  # filtered to the one row that reads 39
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert {url.split(":")[0] for url in requested(browser)} <= {"file", "blob"}
