"""The ProteinGym-wide study on the cluster: what a dry run plans, and what the study would cost.

Builds, in `--workdir`, the study of config.yaml over ProteinGym's substitution assays (`proteingym:
{reference, dms_dir, assays}`, no `proteins:`): every assay file generated from its `target_seq` with
random DMS values (ProteinGym's own files are not needed), and placeholder checkpoint and SAE files
(a dry run opens neither). Then, for the three study assays and for all of them, it runs

    snakemake --profile profiles/unity -n

and prints the wall time, the jobs planned and the SLURM submissions they make: one per group job
(profiles/unity's `groups:`) plus one per remote job outside a group. Local rules (tables, figures)
are never submitted.

    python benchmarks/bench_proteingym.py --workdir /tmp/pg
    python benchmarks/bench_proteingym.py --workdir /tmp/pg --estimate-only   # the FLOP estimate alone

It also prints an estimate (not a measurement) of the study's GPU cost for ESM-2 650M with the
4096-latent SAEs: the matmul count of every engine row each analysis runs (the count `bench_engine.py`
reports as achieved TFLOP/s), at an effective 33 TFLOP/s (half an H100 SXM's fp32 peak), on one GPU
and on N.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from esmsae.pipeline.submissions import GROUP_JOB, job_stats, local_rules, planned_submissions

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "proteingym" / "DMS_substitutions.csv"
STUDY_ASSAYS = ["EPHB2_HUMAN_Tsuboyama_2023_1F0M", "DNJA1_HUMAN_Tsuboyama_2023_2LO1",
                "PR40A_HUMAN_Tsuboyama_2023_1UZC"]
WORKFLOW = ("Snakefile", "rules", "workflow_scripts", "profiles", "config.yaml")
AMINO = "ACDEFGHIKLMNPQRSTVWY"
ROWS_PER_ASSAY = 60  # generated single substitutions per assay (the study draws at most 50)


# -- the study's workdir ------------------------------------------------------------------------------
def write_assays(reference: pd.DataFrame, folder: Path, seed: int = 0) -> None:
    """One assay file per row: ROWS_PER_ASSAY random single substitutions of `target_seq`, random DMS."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for seq, name in zip(reference["target_seq"], reference["DMS_filename"], strict=True):
        rows = []
        for pos in sorted(rng.choice(len(seq), size=min(ROWS_PER_ASSAY, len(seq)), replace=False)):
            new = rng.choice([a for a in AMINO if a != seq[pos]])
            rows.append((f"{seq[pos]}{pos + 1}{new}", seq[:pos] + new + seq[pos + 1:]))
        pd.DataFrame({"mutant": [r[0] for r in rows], "mutated_sequence": [r[1] for r in rows],
                      "DMS_score": rng.normal(-1.0, 1.0, len(rows)).round(4),
                      "DMS_score_bin": 0}).to_csv(folder / name, index=False)


def build_workdir(workdir: Path, reference_path: Path) -> dict:
    """The workflow, ProteinGym's reference file, generated assays and placeholder weights in `workdir`."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in WORKFLOW:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, workdir / name)
    reference = pd.read_csv(reference_path)
    shutil.copy2(reference_path, workdir / "DMS_substitutions.csv")
    write_assays(reference, workdir / "dms")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    layers = sorted(set(config["patching"]["layers"]) | set(config["ig"]["layers"]))
    (workdir / "esm2_placeholder.pt").write_bytes(b"")
    (workdir / "sae").mkdir()
    for layer in layers:
        (workdir / "sae" / config["sae"]["pattern"].format(layer=layer)).write_bytes(b"")
    return {"esm_checkpoint": "esm2_placeholder.pt", "sae": {"dir": "sae"},
            "proteingym": {"reference": "DMS_substitutions.csv", "dms_dir": "dms"}}


def study_config(workdir: Path, base: dict, assays: str | list[str]) -> None:
    """config.yaml with ProteinGym's assays for `proteins`."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.pop("proteins")
    config["esm_checkpoint"] = base["esm_checkpoint"]
    config["sae"]["dir"] = base["sae"]["dir"]
    config["proteingym"] = dict(base["proteingym"], assays=assays)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


# -- reading a dry run --------------------------------------------------------------------------------
def submissions(output: str, profile: dict) -> tuple[int, Counter]:
    """The SLURM submissions a dry run plans (esmsae.pipeline.submissions), in all and by kind (the group
    kind, protein/ablation/layer, or the rule)."""
    planned = planned_submissions(output, set(profile.get("groups", {})), local_rules(REPO / "rules"))
    groups = set(GROUP_JOB.findall(output))
    by_kind = Counter()
    for name, n in planned.items():
        by_kind[re.sub(r"_.*", "", name) if name in groups else name] += n
    return sum(planned.values()), by_kind


def dry_run(workdir: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/unity", "-n"], cwd=workdir,
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the dry run failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return seconds, done.stdout + done.stderr


# -- the FLOP estimate --------------------------------------------------------------------------------
D, N_LAYERS, VOCAB, CONTEXT = 1280, 33, 33, 1024   # ESM-2 650M
K, D_SAE = 64, 4096                                 # the Adams et al. SAEs


def block_flops(tokens: int) -> float:
    """One token through one block, forward: 12·d² multiply-adds in the projections and the MLP, and 2·T·d
    in attention (2 FLOPs each)."""
    return 2 * (12 * D * D + 2 * tokens * D)


def rows_flops(rows: float, tokens: int, blocks: int, backward: bool = False) -> float:
    """`rows` engine rows of `tokens` tokens through `blocks` blocks (a backward pass costs two forwards)."""
    return rows * tokens * blocks * block_flops(tokens) * (3 if backward else 1)


PROTEIN_GROUP = ("score_mutations", "patch_features", "compute_atp", "patch_positions", "integrate_gradients",
                 "find_circuits", "link_layers")


def study_flops(reference: pd.DataFrame, config: dict, n_mutants: int) -> tuple[dict[str, float], list[float]]:
    """Every GPU rule's FLOPs over the study, and each protein's group job's (profiles/unity: protein_NAME):
    per protein, its n selected mutants at its token count (the whole sequence, or for a long one its
    1,024-token slices)."""
    patching = config["patching"]["layers"]
    ig = config["ig"]["layers"]
    graph_pairs = list(zip(patching[:-1], patching[1:], strict=True))
    steps = config["ig"]["steps"]
    out: Counter = Counter()
    whole_tokens, groups = [], []
    for length, singles in zip(reference["seq_len"], reference["DMS_number_single_mutants"], strict=True):
        n = min(n_mutants, int(singles))
        tokens = min(int(length) + 2, CONTEXT)
        long = int(length) + 2 > CONTEXT
        windows = n if long else 1                  # a long protein: at worst one slice per mutant
        out["score_mutations"] += 2 * rows_flops(windows, tokens, N_LAYERS)   # both forwards
        for layer in patching:
            upper = N_LAYERS - layer
            prefix = rows_flops(n + windows, tokens, layer)                  # WT and mutant states up to ℓ
            out["patch_features"] += prefix + rows_flops(n * (2 * K + 15), tokens, upper)
            out["compute_atp"] += prefix + rows_flops(n, tokens, upper, backward=True)
            out["patch_positions"] += prefix + rows_flops(n * (tokens + 1), tokens, upper)
        for layer in ig:
            upper = N_LAYERS - layer
            prefix = rows_flops(n + windows, tokens, layer)
            out["integrate_gradients"] += prefix + rows_flops(n * steps, tokens, upper, backward=True)
            out["find_circuits"] += prefix + rows_flops(n * 2 * (K + 1), tokens, upper)
            if not long:  # four sets and their 100 nulls each, one WT forward per set
                out["ablate_feature_sets"] += rows_flops(4 * 101, tokens, upper)
        for up, _ in graph_pairs:  # changed features up and down, 80 edges, two held sets per source
            out["link_layers"] += rows_flops(n * 300, tokens, N_LAYERS - up) + rows_flops(n, tokens, up,
                                                                                      backward=True)
        if not long:
            whole_tokens.append((tokens, n))
        groups.append(sum(out[r] for r in PROTEIN_GROUP) - sum(groups))
    for layer in sorted(set(patching) | set(ig)):
        # fidelity: every WT and selected mutant on both forwards, ~6 spliced variants each
        out["measure_sae_quality"] += sum(2 * 6 * rows_flops(1 + n, t, N_LAYERS) for t, n in whole_tokens)
        # activity: the WT sequences and 10,000 reference sequences of ~300 residues, up to the layer
        out["characterize_features"] += rows_flops(10_000, 302, layer) + sum(rows_flops(1, t, layer)
                                                                             for t, _ in whole_tokens)
    for layer in ig:  # output effects: ≤ 20 shown features × 8 positions per WT sequence, one row each
        out["measure_output_effects"] += sum(rows_flops(20 * 8, t, N_LAYERS - layer) for t, _ in whole_tokens)
    return dict(out), groups


def print_estimate(reference: pd.DataFrame, n_gpus: list[int], tflops: float) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    flops, groups = study_flops(reference, config, config["mutations"]["n"])
    total = sum(flops.values())
    print(f"\nEstimated GPU cost, ESM-2 650M, {len(reference)} assays, ≤ {config['mutations']['n']} mutants each "
          f"(an estimate by matmul count at {tflops:g} TFLOP/s effective, not a measurement):")
    for rule, value in sorted(flops.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:24s} {value / 1e15:10.1f} PFLOP  {value / tflops / 1e12 / 3600:8.1f} GPU-h  "
              f"({value / total:5.1%})")
    hours = total / tflops / 1e12 / 3600
    print(f"  {'total':24s} {total / 1e15:10.1f} PFLOP  {hours:8.1f} GPU-h")
    longest = max(groups) / tflops / 1e12 / 3600
    median = float(np.median(groups)) / tflops / 1e12 / 3600
    print(f"  one protein's group job: median {median * 60:.1f} min, longest {longest:.2f} h "
          f"({reference['DMS_id'].iloc[int(np.argmax(groups))]})")
    for n in n_gpus:
        print(f"  on {n:3d} GPU(s): ≈ {max(hours / n, longest):7.1f} h of wall time (the work spread evenly, "
              "and never less than the longest group)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=SHARED, help="ProteinGym's DMS_substitutions.csv")
    parser.add_argument("--estimate-only", action="store_true")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tflops", type=float, default=33.0, help="effective TFLOP/s of one GPU")
    args = parser.parse_args()
    if not args.reference.is_file():
        raise SystemExit(f"{args.reference}: ProteinGym's reference file not found (--reference)")
    reference = pd.read_csv(args.reference)
    if not args.estimate_only:
        base = build_workdir(args.workdir, args.reference)
        profile = yaml.safe_load((REPO / "profiles" / "unity" / "config.yaml").read_text())
        long = int((reference["seq_len"] + 2 > CONTEXT).sum())
        for label, assays in (("3 assays", STUDY_ASSAYS), (f"{len(reference)} assays", "all")):
            study_config(args.workdir, base, assays)
            seconds, output = dry_run(args.workdir)
            jobs = job_stats(output)
            n_submissions, by_kind = submissions(output, profile)
            print(f"{label}: dry run planned {sum(jobs.values())} jobs in {seconds:.1f} s; "
                  f"{n_submissions} SLURM submissions ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})")
        print(f"({long} of {len(reference)} assays are longer than the model's context: scored and patched on "
              "windows, left out of the whole-sequence stages)")
    print_estimate(reference, args.gpus, args.tflops)


if __name__ == "__main__":
    main()
