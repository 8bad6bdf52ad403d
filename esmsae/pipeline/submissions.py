"""How many SLURM jobs a run submits: read from a dry run's output and the workflow's rules.

A cluster profile (profiles/unity) groups rules (`groups:`): one group job is one submission, whatever
the number of pieces in it. Rules outside a group are one submission per job, except the Snakefile's
local rules (`localrule: True`: tables, figures), which run where Snakemake runs. Used by the
ProteinGym benchmark (benchmarks/bench_proteingym.py) and by the tests that compare what a dry run plans
with what a (fake) cluster was sent.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

GROUP_JOB = re.compile(r"Group job (\S+) \(jobs in")
# `rule NAME:` / `checkpoint NAME:`, or `rule:` followed by `name: f"prefix_{...}"` (a rule made in a loop)
NAMED_RULE = re.compile(r"\s*(?:rule|checkpoint) (\w+):")
LOOP_RULE_NAME = re.compile(r"\s*f?[\"'](\w+?)\{")


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints before running (or dry-running): rule -> job count."""
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return {}
    counts = {}
    for line in lines[lines.index("Job stats:") + 3:]:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        if fields[0] != "total":
            counts[fields[0]] = int(fields[1])
    return counts


def local_rules(rules_dir: Path) -> tuple[set[str], tuple[str, ...]]:
    """The rules marked `localrule: True` in `rules_dir/*.smk` (and `all`), and the name prefixes of local
    rules made in a loop (`name: f"plot_{name}"`)."""
    names, prefixes = {"all"}, []
    for path in sorted(Path(rules_dir).glob("*.smk")):
        rule, lines = None, path.read_text().splitlines()
        for i, line in enumerate(lines):
            if m := NAMED_RULE.match(line):
                rule = m.group(1)
            elif re.match(r"\s*(?:rule|checkpoint):\s*$", line):
                rule = None
            elif rule is None and re.match(r"\s*name:\s*$", line) and i + 1 < len(lines):
                if m := LOOP_RULE_NAME.match(lines[i + 1]):
                    rule = ("prefix", m.group(1))
            elif rule and re.match(r"\s*localrule: True", line):
                if isinstance(rule, tuple):
                    prefixes.append(rule[1])
                else:
                    names.add(rule)
    return names, tuple(prefixes)


def is_local(rule: str, local: tuple[set[str], tuple[str, ...]]) -> bool:
    names, prefixes = local
    return rule in names or rule.startswith(prefixes)


def planned_submissions(output: str, grouped_rules: set[str], local: tuple[set[str], tuple[str, ...]]) -> Counter:
    """What a dry run's `output` would submit: each group job by name (1 each), and each rule outside a group
    and not local by its job count.

    A dry run may print a group more than once as it simulates the run (a group grows as its pieces become
    ready), so groups are counted by name."""
    out = Counter({name: 1 for name in GROUP_JOB.findall(output)})
    for rule, n in job_stats(output).items():
        if rule not in grouped_rules and not is_local(rule, local):
            out[rule] += n
    return out


def submission_name(comment: str, groups: set[str]) -> str:
    """The job a submission's `sbatch --comment` names (snakemake-executor-plugin-slurm writes
    `rule_<rule>[_wildcards_<values>]`, or `rule_<group>_<its rules>` for a group job): the group, or the rule."""
    for group in sorted(groups, key=len, reverse=True):
        if comment == f"rule_{group}" or comment.startswith(f"rule_{group}_"):
            return group
    m = re.match(r"rule_(\w+?)(_wildcards_|$)", comment)
    if not m:
        raise ValueError(f"sbatch --comment {comment!r} names neither a rule nor one of the groups {sorted(groups)}")
    return m.group(1)
