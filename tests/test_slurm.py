"""The Unity profile (profiles/unity) on a fake SLURM: what it submits, and a group job killed at its time limit.

`tests/fake_slurm/` holds stand-ins for sbatch, srun, sacct, squeue, scancel, sinfo, sacctmgr,
sshare and scontrol that run each submitted job on this machine and record every sbatch call
(see `tests/fake_slurm/_fake_slurm.py`). With them first on PATH, snakemake-executor-plugin-slurm
drives the demo as it would drive Unity: one run, in which the group job of one protein (its scores
and every per-layer analysis, profiles/unity's `groups:`) is killed at its "time limit" once two of
its patch_features mutants are done, retried by Snakemake, and resumed from the pieces it had
finished. The profile's cluster-sized resources go to sbatch and are ignored; only the job count and
threads are scaled down for a 2-core machine.

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

from esmsae.pipeline import submissions

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
GROUPED = PROFILE["groups"]  # rule -> group name pattern, e.g. protein_{protein}
# Rules that must run where Snakemake runs (`localrule: True`: tables, figures), never submitted.
LOCAL = submissions.local_rules(REPO / "rules")


def is_local(rule: str) -> bool:
    return submissions.is_local(rule, LOCAL)


# The demo at one layer (every rule, 25 jobs instead of 43): the plugin polls job states at
# growing intervals, so each step of the DAG costs half a minute here whatever its size.
ONE_LAYER = {"patching": {"layers": [2]}, "ig": {"layers": [2]}, "graph": {"layers": [2, 4]}}
# A 2-core machine: a few jobs at a time, one thread each (as in the demo profile), and status
# polls from 1 s on instead of the plugin's 40 s. Resources stay the profile's.
SMALL_MACHINE = ("--jobs", "6", "--set-threads", *(f"{rule}=1" for rule in GPU_RULES),
                 "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1")

# The job killed at its time limit: the group job of one protein, once two of its patch_features
# mutants are done (the plugin's sbatch --comment for a group: rule_<group>_<its rules, sorted>).
PROTEIN, LAYER = list(DEMO["proteins"])[-1], ONE_LAYER["patching"]["layers"][0]
KILLED_GROUP = f"protein_{PROTEIN}"
KILLED_PATTERN = f"^rule_{KILLED_GROUP}_"
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

    def name(self, groups: set[str]) -> str:
        """The group this job ran, or its rule."""
        return submissions.submission_name(self.comment, groups)

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

    @property
    def groups(self) -> set[str]:
        return set(re.findall(r"Group job (\S+) \(jobs in", self.run.output))

    def named(self, name: str) -> list[Submission]:
        return [s for s in self.submissions if s.name(self.groups) == name]


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
    return run_on_fake_slurm(workdir, FAKE_SLURM_TIMEOUT_RULE=KILLED_PATTERN, FAKE_SLURM_TIMEOUT_WHEN=TWO_DONE)


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
def dry_run_submissions(tmp_path: Path) -> Counter:
    """What a dry run of the same demo with profiles/unity plans to submit, with no SLURM on PATH."""
    workdir = copy_workflow(tmp_path / "workflow")
    env = clean_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != FAKE_SLURM)
    run = succeeded(snakemake(workdir, *one_layer_demo(workdir, "profiles/unity"), "-n", env=env,
                              timeout=DRY_TIMEOUT), "the dry run with profiles/unity")
    return submissions.planned_submissions(run.output, set(GROUPED), LOCAL)


def expected_groups() -> set[str]:
    """The group jobs of the one-layer demo, from the profile's patterns: one per protein for its per-layer
    analyses, one per layer with an SAE for its fidelity and activity."""
    proteins, layers = list(DEMO["proteins"]), sorted(set(ONE_LAYER["graph"]["layers"]))
    return ({GROUPED["patch_features"].format(protein=p) for p in proteins}
            | {GROUPED["measure_sae_quality"].format(layer=layer) for layer in layers})


def test_run_succeeds_with_every_job_submitted(slurm, tmp_path):
    succeeded(slurm.run, "the demo through profiles/unity on the fake SLURM")
    assert slurm.groups == expected_groups()
    planned = {rule: n for rule, n in planned_jobs(slurm.run.output).items()
               if not is_local(rule) and rule not in GROUPED}
    expected = Counter(planned) + Counter({group: 1 for group in expected_groups()})
    expected[KILLED_GROUP] += 1  # the retry of the group job that timed out
    submitted = Counter(s.name(slurm.groups) for s in slurm.submissions)
    assert submitted == expected
    assert Counter(s.state for s in slurm.submissions) == {"COMPLETED": sum(expected.values()) - 1, "TIMEOUT": 1}
    # what the dry run counts (the ProteinGym benchmark's figure) is what was submitted, the retry aside
    assert dry_run_submissions(tmp_path) == expected - Counter({KILLED_GROUP: 1})


GROUP_PIECES = {  # the one-layer demo: every grouped rule has one job per protein, or per layer, in its group
    kind: {rule: 1 for rule, group in GROUPED.items() if group.startswith(f"{kind}_")}
    for kind in ("protein", "layer")}


def group_rules(sub: Submission) -> list[str]:
    """The rules a group job ran (its sbatch --wrap names them: `--allowed-rules a b c`)."""
    wrap = sub.option("--wrap") or ""
    found = re.search(r"--allowed-rules ((?:\w+ )+)", wrap)
    assert found, wrap[:2000]
    return sorted(found.group(1).split())


def test_gpu_groups_ask_for_one_gpu_and_their_pieces_time(slurm):
    """A group job has one GPU (its pieces run in series on it), the sum of its pieces' runtimes and the
    largest of their mem_mb; a GPU rule outside a group asks for its own."""
    subs = [s for s in slurm.submissions if s.name(slurm.groups) in slurm.groups - {KILLED_GROUP}]
    assert {s.name(slurm.groups) for s in subs} == slurm.groups - {KILLED_GROUP}
    for sub in subs:
        pieces = GROUP_PIECES[sub.name(slurm.groups).split("_")[0]]
        assert group_rules(sub) == sorted(pieces), (sub.option("--wrap") or "")[:2000]
        assert sub.option("-p", "--partition") == resource("patch_features", "slurm_partition"), sub.argv
        assert "--gpus=1" in sub.argv, sub.argv
        assert sub.option("-t", "--time") == str(sum(n * resource(r, "runtime") for r, n in pieces.items()))
        assert sub.option("--mem") == str(max(resource(r, "mem_mb") for r in pieces)), sub.argv
    alone = [s for s in slurm.submissions if s.name(slurm.groups) in GPU_RULES]
    assert {s.name(slurm.groups) for s in alone} == {"train_sae", "measure_output_effects", "ablate_feature_sets"}
    for sub in alone:
        rule = sub.name(slurm.groups)
        assert "--gpus=1" in sub.argv, sub.argv
        assert sub.option("-t", "--time") == str(resource(rule, "runtime")), sub.argv
        assert sub.option("--mem") == str(resource(rule, "mem_mb")), sub.argv


def test_light_rules_ask_for_no_gpu(slurm):
    names = [s.name(slurm.groups) for s in slurm.submissions]
    assert not any(is_local(name) for name in names)  # tables and figures run locally
    subs = [s for s in slurm.submissions if s.name(slurm.groups) not in GPU_RULES
            and s.name(slurm.groups) not in slurm.groups]
    assert {s.name(slurm.groups) for s in subs} == {"build_demo_model"}
    for sub in subs:
        assert not sub.asks_for_gpu, sub.argv
        rule = sub.name(slurm.groups)
        assert sub.option("-p", "--partition") == resource(rule, "slurm_partition"), sub.argv
        assert sub.option("-t", "--time") == str(resource(rule, "runtime")), sub.argv


def test_every_job_has_account_and_requeue(slurm):
    for sub in slurm.submissions:
        assert sub.option("-A", "--account") == resource("all", "slurm_account"), sub.argv
        assert "--requeue" in sub.argv, sub.argv


# -- c) a group job killed at its time limit is retried and resumes -------------------------------
def test_timed_out_group_is_retried_with_more_time(slurm):
    killed = slurm.named(KILLED_GROUP)
    assert [s.state for s in killed] == ["TIMEOUT", "COMPLETED"], slurm.run.output[-5000:]
    first, retry = killed
    assert "--attempt 1 " in first.option("--wrap") and "--attempt 2 " in retry.option("--wrap")
    pieces = GROUP_PIECES["protein"]
    for sub, attempt in ((first, 1), (retry, 2)):
        assert sub.option("-t") == str(sum(resource(r, "runtime", attempt=attempt) for r in pieces))
        assert sub.option("--mem") == str(max(resource(r, "mem_mb", attempt=attempt) for r in pieces))


def test_retry_resumes_from_finished_mutants(slurm):
    """The retry of the group (Snakemake reruns a failed group whole) reloads the killed piece's finished
    mutants from its kept work."""
    log = (slurm.run.workdir / KILLED_LOG).read_text()
    found = RESUME_LINE.findall(log)
    assert found, f"no 'resume: N of M mutants already done' in {KILLED_LOG}:\n{log[-3000:]}"
    n_done, n_total = map(int, found[-1])
    assert 2 <= n_done < n_total == DEMO["mutations"]["n"], found
    # keep_pieces (profiles/unity): the work folder stays beside the output, every mutant in it
    pieces = list((slurm.run.workdir / KILLED_WORK).rglob("*.pkl"))
    assert len(pieces) == n_total, pieces


def test_outputs_identical_to_uninterrupted_run(slurm, reference):
    succeeded(slurm.run, "the demo through profiles/unity on the fake SLURM")
    resumed, expected = final_tables(slurm.outdir), final_tables(reference)
    assert sorted(resumed) == sorted(expected)
    differ = [name for name in expected if resumed[name] != expected[name]]
    assert not differ, f"differ from the uninterrupted local run: {differ}"
