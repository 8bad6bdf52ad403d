"""Running Snakemake on a fresh copy of the workflow, for the tests that run the pipeline end to end.

Snakemake runs as a subprocess in a temporary copy, so the repository's own ``results/`` and
``.snakemake/`` are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from esmsae.pipeline.submissions import job_stats

REPO = Path(__file__).resolve().parents[1]
# tests/slow_pieces/sitecustomize.py: put on PYTHONPATH, it slows every finished piece of a
# resumable job by SLOW_PIECES_SECONDS, so that a test can interrupt the job mid-way.
SLOW_PIECES = Path(__file__).with_name("slow_pieces")

WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "config.yaml", "profiles", "envs")
PROFILE = ("--profile", "profiles/demo")
DEMO_CONFIG = "profiles/demo/demo.yaml"
DEMO = yaml.safe_load((REPO / DEMO_CONFIG).read_text())
DEMO_LAYERS = sorted(set(DEMO["patching"]["layers"]) | set(DEMO["ig"]["layers"]))

RUN_TIMEOUT = 900  # a full run; the demo takes about a minute
DRY_TIMEOUT = 300  # parsing the workflow and building the DAG


@dataclass(frozen=True)
class Run:
    """A finished Snakemake call: where it ran, its exit status and its combined stdout/stderr."""

    workdir: Path
    returncode: int
    output: str


def snakemake(workdir: Path, *args: str, timeout: int = DRY_TIMEOUT, env: dict[str, str] | None = None) -> Run:
    """Run Snakemake from this interpreter (in `env`, default this environment) in `workdir`."""
    if env is None:
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "snakemake", *args]
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        out = err.output.decode(errors="replace") if isinstance(err.output, bytes) else (err.output or "")
        pytest.fail(f"snakemake {' '.join(args)} did not finish within {timeout} s:\n{out[-5000:]}")
    return Run(workdir, proc.returncode, proc.stdout)


def succeeded(run: Run, what: str) -> Run:
    assert run.returncode == 0, f"{what} failed (exit {run.returncode}):\n{run.output[-8000:]}"
    return run


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (no results, no .snakemake) to run in."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    return dest


def write_override(folder: Path, name: str, override: dict) -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(override, sort_keys=False))
    return str(path)


def with_override(path: str) -> tuple[str, ...]:
    # A --configfile on the command line replaces the profile's configfile, so name demo.yaml again.
    return (*PROFILE, "--configfile", DEMO_CONFIG, path)


# The 'Job stats' table Snakemake prints before running (or dry-running): rule -> job count.
planned_jobs = job_stats


def finished_rules(output: str) -> list[str]:
    """The rules of the jobs a real run finished, in order."""
    return re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output)


def slow_pieces(seconds: float, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default this environment) with every resumable job pausing `seconds` after each piece."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SLOW_PIECES), env.get("PYTHONPATH", "")) if p)
    env["SLOW_PIECES_SECONDS"] = str(seconds)
    return env
