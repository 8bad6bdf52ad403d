"""Resumable per-mutant work: pieces survive a killed job and the result is identical."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from esmsae.analyses.api import analyse
from esmsae.analyses.patching import PATCHING, patch_protein
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.splice import Splice
from esmsae.pipeline.io import write_csv
from esmsae.pipeline.resume import WorkFolder, fingerprint, run_items

from .conftest import WT, patch_settings
from .snakemake_run import PROFILE, copy_workflow, slow_pieces

SEQ = WT["PR40A_HUMAN"]


def test_pieces_are_reused_and_stale_ones_removed(tmp_path):
    out = tmp_path / "table.csv"
    calls = []

    def compute(i):
        calls.append(i)
        return {"value": i * 10}

    names = ["A1C", "D2E", "F3G"]
    first = run_items(names, compute, WorkFolder(out, "key1"))
    again = run_items(names, compute, WorkFolder(out, "key1"))
    assert first == again == [{"value": 0}, {"value": 10}, {"value": 20}] and calls == [0, 1, 2]
    # A piece stored for another item name is not trusted; a different key discards everything.
    run_items(["A1C", "X2Y", "F3G"], compute, WorkFolder(out, "key1"))
    assert calls == [0, 1, 2, 1]
    WorkFolder(out, "key2")
    assert [p.name for p in (tmp_path / "table.csv.work").iterdir()] == ["key2"]
    WorkFolder(out, "key2").finish()
    assert not (tmp_path / "table.csv.work").exists()


def test_unreadable_piece_is_recomputed(tmp_path):
    work = WorkFolder(tmp_path / "t.csv", "k")
    run_items(["A1C"], lambda i: 1, work)
    next(work.dir.iterdir()).write_bytes(b"truncated")
    assert run_items(["A1C"], lambda i: 2, work) == [2]


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint(a=1, b=[1, 2]) == fingerprint(b=[1, 2], a=1)
    assert fingerprint(a=1, b=[1, 2]) != fingerprint(a=1, b=[2, 1])


def test_crash_halfway_then_resume_gives_the_same_table(lm, saes, tmp_path):
    splice = Splice(lm, saes[2], SEQ, 2)
    mutants = [parse_mutant(t, SEQ) for t in ("W4A", "K7P", "F14G", "L17R", "N38Y")]
    settings = patch_settings()
    reference = patch_protein(splice, mutants, settings)
    out = tmp_path / "PR40A_HUMAN_L2.csv"

    class Crash(RuntimeError):
        pass

    seen = []

    def crash_on_the_third(view, settings, context):
        seen.append(view.mutant.name)
        if len(seen) == 3:
            raise Crash
        return PATCHING.run(view, settings, context)

    with pytest.raises(Crash):
        analyse(dataclasses.replace(PATCHING, run=crash_on_the_third), splice, mutants, settings,
                work=WorkFolder(out, "k"))
    assert len(list((tmp_path / "PR40A_HUMAN_L2.csv.work" / "k").iterdir())) == 2
    resumed = patch_protein(splice, mutants, settings, work=WorkFolder(out, "k"))
    pd.testing.assert_frame_equal(resumed, reference)
    write_csv(resumed, out)
    write_csv(reference, tmp_path / "reference.csv")
    assert out.read_bytes() == (tmp_path / "reference.csv").read_bytes()


@pytest.mark.slow
def test_sigkill_mid_rule_then_rerun_with_another_batch_size_resumes_identically(tmp_path):
    """SIGKILL a local Snakemake run inside patch_features, start again with another batch_size: it
    resumes from the finished mutants, and its table equals an uninterrupted run's at the default size."""
    workdir = copy_workflow(tmp_path / "wf")
    target = "results/demo/patching/EPHB2_HUMAN_L2.csv"
    work = workdir / f"{target}.work"
    env = slow_pieces(1.0)
    cmd = [sys.executable, "-m", "snakemake", *PROFILE, target]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            pieces = list(work.glob("*/*.pkl")) if work.exists() else []
            if len(pieces) >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.2)
        else:
            pytest.fail("no mutant finished within 600 s")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    n_before = len(list(work.glob("*/*.pkl")))
    assert n_before >= 2 and not (workdir / target).exists()

    def run(*extra):
        done = subprocess.run([*cmd, *extra], cwd=workdir, capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]

    run("--unlock")  # a SIGKILL'd Snakemake leaves its lock; the README says to unlock, then rerun
    run("--config", "batch_size=3")  # after an out-of-memory error, say: a runtime knob keeps the pieces
    log = (workdir / "results/demo/logs/patch_features/EPHB2_HUMAN_L2.log").read_text()
    resumed = re.findall(r"resume: (\d+) of (\d+) ", log)
    assert resumed, log
    n_done, n_total = map(int, resumed[-1])
    assert n_total == 8 and n_total > n_done >= n_before >= 2
    assert not work.exists()
    interrupted = (workdir / target).read_bytes()
    (workdir / target).unlink()
    run()
    assert (workdir / target).read_bytes() == interrupted
