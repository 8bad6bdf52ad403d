"""A tiny local SLURM for tests: just enough of sbatch, srun, sacct, squeue, scancel, sinfo,
sacctmgr, sshare and scontrol for snakemake-executor-plugin-slurm 2.x.

Every command in this folder is a two-line script that calls `main()` here; the command's name
picks what it does. State lives under $FAKE_SLURM_DIR:

    sbatch.jsonl      one line per sbatch call: {"jobid", "argv"}
    jobs/<id>.json    one job: name, comment, workdir, log, state, exit code, pgid
    jobs/<id>.sh      its batch script (the --wrap text or the script sbatch was given)
    next_id           the last job id handed out

`sbatch` records its argv, hands out an id and starts `_fake_slurm.py run <id>` in the background:
that process runs the batch script in its own process group (so `scancel` can kill all of it),
writes RUNNING, then COMPLETED/FAILED from the exit status. Resources are ignored. Inside the job,
`srun` drops its options and runs its command.

A forced time limit, for one job: when FAKE_SLURM_TIMEOUT_RULE (a regex) matches a job's
--comment (the plugin writes `rule_<rule>_wildcards_<values>`) and the shell test
FAKE_SLURM_TIMEOUT_WHEN succeeds in the job's working directory, the job's process group is killed
and the job ends TIMEOUT. This fires once per $FAKE_SLURM_DIR, so the retry runs undisturbed.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ACCOUNTS = os.environ.get("FAKE_SLURM_ACCOUNTS", "fake_account")  # what sacctmgr lists, comma-separated
PARTITIONS = "cpu* cpu-preempt gpu gpu-preempt"  # sinfo -o %P; * marks the default
POLL = 0.1  # seconds between checks of a running job
# sbatch options that take no value; every other option without "=" takes the next word.
SBATCH_FLAGS = {"--parsable", "--requeue", "--no-requeue", "--exclusive", "--test-only", "-Q", "--quiet"}
FINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"}


def state_dir() -> Path:
    folder = Path(os.environ["FAKE_SLURM_DIR"])
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    return folder


def job_file(jobid: str) -> Path:
    return state_dir() / "jobs" / f"{jobid}.json"


def read_job(jobid: str) -> dict | None:
    path = job_file(jobid)
    return json.loads(path.read_text()) if path.is_file() else None


def write_job(job: dict) -> None:
    path = job_file(job["id"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(path)  # readers never see half a file


def all_jobs() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((state_dir() / "jobs").glob("*.json"))]


def set_state(jobid: str, state: str, **extra) -> bool:
    """Move a job to `state` unless it has already ended; True if it moved."""
    with open(state_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        job = read_job(jobid)
        if job is None or job["state"] in FINAL:
            return False
        job.update(state=state, **extra)
        write_job(job)
        return True


def new_jobid() -> str:
    with open(state_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = state_dir() / "next_id"
        jobid = int(counter.read_text()) + 1 if counter.is_file() else 1001
        counter.write_text(str(jobid))
    return str(jobid)


def option(args: list[str], *names: str) -> str | None:
    """The value of the last of `names` in an argv ("--opt v", "--opt=v" or "-Xv")."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1:]
    return value


# -- sbatch ---------------------------------------------------------------------------------------
def sbatch(args: list[str]) -> int:
    jobid = new_jobid()
    with open(state_dir() / "sbatch.jsonl", "a") as log:
        log.write(json.dumps({"jobid": jobid, "argv": args}) + "\n")

    # Split options from the script and its arguments.
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1 if ("=" in args[i] or args[i] in SBATCH_FLAGS) else 2
    wrap = option(args, "--wrap")
    if wrap is not None:
        script = "#!/bin/sh\n" + wrap + "\n"
    elif i < len(args):
        script = Path(args[i]).read_text() if args[i] != "/dev/stdin" else sys.stdin.read()
    else:
        script = sys.stdin.read()
    script_path = state_dir() / "jobs" / f"{jobid}.sh"
    script_path.write_text(script)

    workdir = option(args, "-D", "--chdir") or os.getcwd()
    log = (option(args, "--output", "-o") or "slurm-%j.out").replace("%j", jobid)
    write_job({
        "id": jobid, "name": option(args, "--job-name", "-J") or "sbatch",
        "comment": option(args, "--comment") or "", "workdir": workdir,
        "log": str(Path(workdir, log)), "state": "PENDING", "exit_code": None, "pgid": None,
        "reason": "None",
    })
    subprocess.Popen([sys.executable, __file__, "run", jobid], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(jobid if "--parsable" in args else f"Submitted batch job {jobid}")
    return 0


def run(jobid: str) -> int:
    """Run one job's batch script to its end (the background half of sbatch)."""
    job = read_job(jobid)
    env = dict(os.environ, SLURM_JOB_ID=jobid, SLURM_JOBID=jobid, SLURM_JOB_NAME=job["name"],
               SLURM_SUBMIT_DIR=job["workdir"])
    Path(job["log"]).parent.mkdir(parents=True, exist_ok=True)
    with open(job["log"], "ab") as out:
        proc = subprocess.Popen(["sh", str(state_dir() / "jobs" / f"{jobid}.sh")], cwd=job["workdir"], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if not set_state(jobid, "RUNNING", pgid=proc.pid):  # cancelled while starting
        kill_group(proc.pid)
    while proc.poll() is None:
        if timeout_due(job):
            with open(job["log"], "a") as out:
                print(f"slurmstepd: error: *** JOB {jobid} CANCELLED DUE TO TIME LIMIT (fake) ***", file=out)
            if set_state(jobid, "TIMEOUT", reason="TimeLimit"):
                kill_group(proc.pid)
        time.sleep(POLL)
    code = proc.returncode
    set_state(jobid, "COMPLETED" if code == 0 else "FAILED", exit_code=code,
              reason="None" if code == 0 else "NonZeroExitCode")
    return 0


def timeout_due(job: dict) -> bool:
    """The forced time limit: the job matches, its condition holds and it has not fired before."""
    pattern, condition = os.environ.get("FAKE_SLURM_TIMEOUT_RULE"), os.environ.get("FAKE_SLURM_TIMEOUT_WHEN", "true")
    if not pattern or not re.search(pattern, job["comment"]):
        return False
    fired = state_dir() / "timeout_fired"
    if fired.exists():
        return False
    if subprocess.run(["sh", "-c", condition], cwd=job["workdir"], check=False).returncode != 0:
        return False
    fired.write_text(job["id"])
    return True


def kill_group(pgid: int) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left (as slurmd does after KillWait)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(0.5)


# -- srun (inside a job) --------------------------------------------------------------------------
def srun(args: list[str]) -> int:
    """Drop srun's options and run the command: the plugin's job step, `srun -n1 ... <cmd>`."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1 if ("=" in args[i] or re.fullmatch(r"-\w\d+", args[i])) else 2
    if i == len(args):
        print("srun: fake: no command", file=sys.stderr)
        return 1
    os.execvp(args[i], args[i:])


# -- queries --------------------------------------------------------------------------------------
def sacct(args: list[str]) -> int:
    fields = (option(args, "--format", "-o") or "").lower()
    select = option(args, "-j", "--jobs")
    if select:  # sacct -j <id>[.<step>] ...: the failure reason of step 0, or the node list
        jobid, _, step = select.partition(".")
        job = read_job(jobid)
        if job is None:
            return 0
        if fields.startswith("nodelist"):
            print("fakenode01")
        elif fields == "reason" and step in ("", "0"):
            print(job["reason"])
        return 0
    if "account" in fields:  # the plugin guesses an account from the user's last job
        print(ACCOUNTS.split(",")[0])
        return 0
    name = option(args, "--name")  # the status query: JobIdRaw|State of this run's jobs
    for job in all_jobs():
        if name is None or job["name"] == name:
            print(f"{job['id']}|{job['state']}")
    return 0


def squeue(args: list[str]) -> int:
    name = option(args, "--name", "-n")
    for job in all_jobs():
        if name is None or job["name"] == name:
            print(f"{job['id']}|{job['state']}")
    return 0


def scancel(args: list[str]) -> int:
    for jobid in (a for a in args if not a.startswith("-")):
        job = read_job(jobid.split("_")[0])
        if job and set_state(job["id"], "CANCELLED", reason="Cancelled") and job.get("pgid"):
            kill_group(job["pgid"])
    return 0


def sinfo(args: list[str]) -> int:
    print("PARTITION")
    print("\n".join(PARTITIONS.split()))
    return 0


def sacctmgr(args: list[str]) -> int:
    print("\n".join(ACCOUNTS.split(",")))
    return 0


def sshare(args: list[str]) -> int:
    return sacctmgr(args)


def scontrol(args: list[str]) -> int:
    if args[:2] == ["show", "config"]:
        print("MaxArraySize            = 1001\nMinJobAge               = 300 sec")
    return 0


COMMANDS = {f.__name__: f for f in (sbatch, srun, sacct, squeue, scancel, sinfo, sacctmgr, sshare, scontrol)}


def main() -> None:
    name = Path(sys.argv[0]).name
    sys.exit(COMMANDS[name](sys.argv[1:]))


if __name__ == "__main__" and sys.argv[1:2] == ["run"]:
    sys.exit(run(sys.argv[2]))
