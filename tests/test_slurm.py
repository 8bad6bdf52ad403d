"""The Unity profile (profiles/unity) on a fake SLURM: what it submits, and a job killed at its time limit.

`tests/fake_slurm/` holds stand-ins for sbatch, srun, sacct, squeue, scancel, sinfo, sacctmgr,
sshare and scontrol that run each submitted job on this machine and record every sbatch call
(see `tests/fake_slurm/_fake_slurm.py`). With them first on PATH, snakemake-executor-plugin-slurm
drives the demo as it would drive Unity: one run, in which one patch_features job is killed at its
"time limit" after two of its mutants, retried by Snakemake, and resumed. The profile's
cluster-sized resources go to sbatch and are ignored; only the job count and threads are scaled
down for a 2-core machine.

Every Snakemake call runs under a timeout, so a hang (the plugin waiting on a job that never
ends) fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .snakemake_run import (
    DEMO,
    DEMO_CONFIG,
    REPO,
    Run,
    copy_workflow,
    planned_jobs,
    slow_pieces,
    snakemake,
    succeeded,
)

pytestmark = pytest.mark.slow

FAKE_SLURM = REPO / "tests" / "fake_slurm"
PROFILE = yaml.safe_load((REPO / "profiles" / "unity" / "config.yaml").read_text())
GPU_RULES = sorted(PROFILE["set-resources"])
# Rules that must run where Snakemake runs (`localrule: True`: tables, figures), never submitted.


def is_local(rule: str) -> bool:
    return rule in ("all", "correlate_dms", "select_features", "label_features", "draw_feature_card",
                    "assemble_graphs") or \
        rule.startswith(("tabulate_", "plot_"))


# The demo at one layer (every rule, 25 jobs instead of 43): the plugin polls job states at
# growing intervals, so each step of the DAG costs half a minute here whatever its size.
ONE_LAYER = {"patching": {"layers": [2]}, "ig": {"layers": [2]}, "graph": {"layers": [2, 4]}}
# A 2-core machine: a few jobs at a time, one thread each (as in the demo profile), and status
# polls from 1 s on instead of the plugin's 40 s. Resources stay the profile's.
SMALL_MACHINE = ("--jobs", "6", "--set-threads", *(f"{rule}=1" for rule in GPU_RULES),
                 "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1")

# The job killed at its time limit: patch_features for one protein, once two mutants are done.
PROTEIN, LAYER = list(DEMO["proteins"])[-1], ONE_LAYER["patching"]["layers"][0]
KILLED_COMMENT = f"rule_patch_features_wildcards_{PROTEIN}_{LAYER}"  # the plugin's sbatch --comment
KILLED_LOG = f"{DEMO['outdir']}/logs/patch_features/{PROTEIN}_L{LAYER}.log"
KILLED_WORK = f"{DEMO['outdir']}/patching/{PROTEIN}_L{LAYER}.csv.work"
TWO_DONE = f'test "$(find {KILLED_WORK} -type f -name "*.pkl" 2>/dev/null | wc -l)" -ge 2'
RESUME_LINE = re.compile(r"resume: (\d+) of (\d+) mutants already done")
PIECE_DELAY = 0.5  # seconds after each finished mutant (tests/slow_pieces), so the kill lands mid-way

RUN_TIMEOUT = 1200  # the SLURM run takes about 5 minutes on 2 cores, the local one 2
DRY_TIMEOUT = 300


def resource(rule: str, name: str, attempt: int = 1):
    """A resource as the profile sets it for `rule`, evaluated as Snakemake does."""
    value = PROFILE["set-resources"].get(rule, {}).get(name, PROFILE["default-resources"].get(name))
    try:
        return eval(str(value), {"attempt": attempt})
    except (NameError, SyntaxError):  # a plain string (cpu,cpu-preempt)
        return value


def clean_env(**extra: str) -> dict[str, str]:
    """This environment outside any SLURM job, with this interpreter's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "FAKE_SLURM_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


def one_layer_demo(workdir: Path, profile: str) -> tuple[str, ...]:
    (workdir / "one_layer.yaml").write_text(yaml.safe_dump(ONE_LAYER))
    return ("--profile", profile, "--configfile", DEMO_CONFIG, "one_layer.yaml")


def final_tables(outdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(outdir)): p.read_bytes()
            for folder in ("scores", "patching", "tables") for p in sorted((outdir / folder).glob("*.csv"))}


# -- the fake cluster -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Submission:
    """One sbatch call: its argv and how the job ended."""

    argv: list[str]
    state: str

    def option(self, *names: str) -> str | None:
        for i, arg in enumerate(self.argv):
            for name in names:
                if arg == name and i + 1 < len(self.argv):
                    return self.argv[i + 1]
                if arg.startswith(name + "="):
                    return arg[len(name) + 1:]
        return None

    @property
    def comment(self) -> str:
        return self.option("--comment")

    @property
    def rule(self) -> str:
        return re.match(r"rule_(\w+?)(_wildcards_|$)", self.comment).group(1)

    @property
    def asks_for_gpu(self) -> bool:
        return any(a.startswith(("--gpus", "--gres", "-G", "--gpus-per")) for a in self.argv)


@dataclass(frozen=True)
class SlurmRun:
    run: Run
    submissions: list[Submission]

    @property
    def outdir(self) -> Path:
        return self.run.workdir / DEMO["outdir"]


def run_on_fake_slurm(workdir: Path, **fake_env: str) -> SlurmRun:
    state = workdir.parent / "fake_slurm_state"
    env = clean_env(FAKE_SLURM_DIR=str(state), FAKE_SLURM_ACCOUNTS=resource("all", "slurm_account"), **fake_env)
    env = slow_pieces(PIECE_DELAY, env)
    env["PATH"] = os.pathsep.join([str(FAKE_SLURM), env["PATH"]])
    try:
        run = snakemake(workdir, *one_layer_demo(workdir, "profiles/unity"), *SMALL_MACHINE,
                        env=env, timeout=RUN_TIMEOUT)
    finally:  # a failed or timed-out run leaves no job behind
        jobids = sorted(p.stem for p in (state / "jobs").glob("*.json"))
        if jobids:
            subprocess.run([str(FAKE_SLURM / "scancel"), *jobids], env=env, timeout=60, check=False)
    calls = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    ends = {c["jobid"]: json.loads((state / "jobs" / f"{c['jobid']}.json").read_text())["state"] for c in calls}
    return SlurmRun(run, [Submission(c["argv"], ends[c["jobid"]]) for c in calls])


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> SlurmRun:
    """The demo through profiles/unity on the fake SLURM, one patch_features job timing out mid-way."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm") / "workflow")
    return run_on_fake_slurm(workdir, FAKE_SLURM_TIMEOUT_RULE=f"^{KILLED_COMMENT}$",
                             FAKE_SLURM_TIMEOUT_WHEN=TWO_DONE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same demo, uninterrupted, with the local executor: the outputs the SLURM run must match."""
    workdir = copy_workflow(tmp_path_factory.mktemp("local") / "workflow")
    succeeded(snakemake(workdir, *one_layer_demo(workdir, "profiles/demo"), env=clean_env(), timeout=RUN_TIMEOUT),
              "the local reference run")
    return workdir / DEMO["outdir"]


# -- a) the dry run needs no SLURM ----------------------------------------------------------------
def planned_resources(output: str) -> dict[str, list[str]]:
    """rule -> the `resources:` line of each job a dry run lists."""
    found: dict[str, list[str]] = {}
    rule = None
    for line in map(str.strip, output.splitlines()):
        if m := re.fullmatch(r"(?:rule|checkpoint) (\w+):", line):
            rule = m.group(1)
        elif rule and line.startswith("resources:"):
            found.setdefault(rule, []).append(line)
    return found


def test_dry_run_without_slurm(tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    env = clean_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != FAKE_SLURM)
    run = succeeded(snakemake(workdir, "--profile", "profiles/unity", "--configfile", DEMO_CONFIG, "-n",
                              env=env, timeout=DRY_TIMEOUT), "the dry run with profiles/unity")
    resources = planned_resources(run.output)  # a dry run lists local rules as `rule` too
    resources.pop("all")  # no command: never submitted
    assert set(resources) == set(planned_jobs(run.output)) - {"all"}, run.output[-3000:]
    assert {"patch_features", "integrate_gradients", "score_mutations"} <= set(resources)
    for rule, lines in resources.items():
        for line in (f"{line}," for line in lines):
            assert f"slurm_partition={resource(rule, 'slurm_partition')}," in line, line
            assert f"runtime={resource(rule, 'runtime')}," in line, line
            assert ("gpu=1," in line) == (rule in GPU_RULES), line
    assert not (workdir / DEMO["outdir"]).exists(), "the dry run wrote outputs"


# -- b) what is submitted -------------------------------------------------------------------------
def test_run_succeeds_with_every_job_submitted(slurm):
    succeeded(slurm.run, "the demo through profiles/unity on the fake SLURM")
    planned = {rule: n for rule, n in planned_jobs(slurm.run.output).items() if not is_local(rule)}
    planned["patch_features"] += 1  # the retry of the job that timed out
    assert Counter(s.rule for s in slurm.submissions) == planned
    assert Counter(s.state for s in slurm.submissions) == {"COMPLETED": sum(planned.values()) - 1, "TIMEOUT": 1}


def test_gpu_rules_ask_for_gpu_partition_and_time(slurm):
    subs = [s for s in slurm.submissions if s.rule in GPU_RULES and s.comment != KILLED_COMMENT]
    assert {s.rule for s in subs} == set(GPU_RULES)
    for sub in subs:
        assert sub.option("-p", "--partition") == resource(sub.rule, "slurm_partition"), sub.argv
        assert "--gpus=1" in sub.argv, sub.argv
        assert sub.option("-t", "--time") == str(resource(sub.rule, "runtime")), sub.argv
        assert sub.option("--mem") == str(resource(sub.rule, "mem_mb")), sub.argv


def test_light_rules_ask_for_no_gpu(slurm):
    assert not any(is_local(s.rule) for s in slurm.submissions)  # tables and figures run locally
    subs = [s for s in slurm.submissions if s.rule not in GPU_RULES]
    assert {s.rule for s in subs} == {"build_demo_model"}
    for sub in subs:
        assert not sub.asks_for_gpu, sub.argv
        assert sub.option("-p", "--partition") == resource(sub.rule, "slurm_partition"), sub.argv
        assert sub.option("-t", "--time") == str(resource(sub.rule, "runtime")), sub.argv


def test_every_job_has_account_and_requeue(slurm):
    for sub in slurm.submissions:
        assert sub.option("-A", "--account") == resource(sub.rule, "slurm_account"), sub.argv
        assert "--requeue" in sub.argv, sub.argv


# -- c) a job killed at its time limit is retried and resumes -------------------------------------
def test_timed_out_job_is_retried_with_more_time(slurm):
    killed = [s for s in slurm.submissions if s.comment == KILLED_COMMENT]
    assert [s.state for s in killed] == ["TIMEOUT", "COMPLETED"], slurm.run.output[-5000:]
    first, retry = killed
    assert "--attempt 1 " in first.option("--wrap") and "--attempt 2 " in retry.option("--wrap")
    assert first.option("-t") == str(resource("patch_features", "runtime", attempt=1))
    assert retry.option("-t") == str(resource("patch_features", "runtime", attempt=2))
    assert retry.option("--mem") == str(resource("patch_features", "mem_mb", attempt=2))


def test_retry_resumes_from_finished_mutants(slurm):
    log = (slurm.run.workdir / KILLED_LOG).read_text()
    found = RESUME_LINE.findall(log)
    assert found, f"no 'resume: N of M mutants already done' in {KILLED_LOG}:\n{log[-3000:]}"
    n_done, n_total = map(int, found[-1])
    assert 2 <= n_done < n_total == DEMO["mutations"]["n"], found
    assert not (slurm.run.workdir / KILLED_WORK).exists(), "the work folder was left behind"


def test_outputs_identical_to_uninterrupted_run(slurm, reference):
    succeeded(slurm.run, "the demo through profiles/unity on the fake SLURM")
    resumed, expected = final_tables(slurm.outdir), final_tables(reference)
    assert sorted(resumed) == sorted(expected)
    differ = [name for name in expected if resumed[name] != expected[name]]
    assert not differ, f"differ from the uninterrupted local run: {differ}"
