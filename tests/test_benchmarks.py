"""The benchmark scripts still run: each on the tiny shape, in a subprocess, as a user would start it.

They time nothing here (timings belong to benchmarks/README.md); what they print about
faithfulness (batched vs naive, batch 7 vs 64) must still be exactly zero on CPU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--shape", "tiny", "--device", "cpu",
                           "--threads", "1", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_engine_runs_and_reports_exact_agreement():
    out = run("bench_engine.py", "--repeats", "1", "--naive", "4")
    for what in ("IG", "circuits", "AtP", "positions", "graph"):
        assert re.search(rf"^{what}\s+:\s+[\d.]+ s per mutant", out, re.M), f"no {what} line:\n{out}"
    assert re.search(r"^batched vs naive :\s+0\.00e\+00", out, re.M), out
    assert re.search(r"^batch 7 vs 64\s+:\s+0\.00e\+00", out, re.M), out


def test_bench_features_runs():
    out = run("bench_features.py", "--sequences", "20", "--length", "40")
    assert "activity pass: 20 sequences x 40 residues" in out and "engine rows" in out, out


def test_bench_quality_runs():
    out = run("bench_quality.py", "--layer", "3", "--sequences", "2", "--d-sae", "64", "--k", "8")
    assert re.search(r"^measured\s+:\s+[\d.]+ s for 2 sequences", out, re.M), out
    assert re.search(r"^all study layers :\s+[\d.]+ TFLOP", out, re.M), out


@pytest.mark.slow
def test_bench_proteingym_plans_the_whole_study(tmp_path):
    """The dry run of all 217 ProteinGym assays with profiles/unity plans, and submits one group job per
    protein, one per analysed layer (fidelity and activity), one output-effects job per IG layer and one
    ablation job per protein that fits the model's context. (Its wall time is the benchmark's to print.)"""
    reference = REPO.parent / "shared" / "data" / "proteingym" / "DMS_substitutions.csv"
    if not reference.is_file():
        pytest.skip(f"{reference} is absent")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_proteingym.py"), "--workdir",
                           str(tmp_path / "pg"), "--reference", str(reference)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pd.read_csv(reference)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    layers = set(config["patching"]["layers"]) | set(config["ig"]["layers"])
    whole = int((table["seq_len"] + 2 <= 1024).sum())
    for label, n, n_whole in (("3 assays", 3, 3), (f"{len(table)} assays", len(table), whole)):
        found = re.search(rf"^{label}: dry run planned (\d+) jobs in [\d.]+ s; (\d+) SLURM submissions", done.stdout,
                          re.M)
        assert found, done.stdout
        assert int(found.group(2)) == n + len(layers) + len(config["ig"]["layers"]) + n_whole, done.stdout
