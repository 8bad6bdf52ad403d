"""Wall time of the whole study through Snakemake, on random weights of a real shape.

Builds, in `--workdir`, a fair-esm checkpoint of the chosen ESM-2 shape and
4096-latent TopK SAEs (k = 64) in the Adams et al. layout for every analysed
layer, then runs the study of config.yaml on them: the three study proteins,
the `--mutants` lowest-scoring in-silico singles each, patching at 5 layers and
IG at 8 layers x 32 steps, circuits, every table and figure. Random weights have
the real cost, so the time is the real study's (model loads included).

    python benchmarks/bench_study.py --shape 650m --device cuda --workdir /tmp/study
    python benchmarks/bench_study.py --shape tiny --device cpu --workdir /tmp/study --mutants 4

Prints the wall time of the Snakemake run and the summed time per rule from the
rules' benchmark files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import yaml

from esmsae.model.demo import write_tiny_esm2
from esmsae.model.sae import random_sae, save_sae

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"tiny": (6, 64, 4), "35m": (12, 480, 20), "650m": (33, 1280, 20)}


def study_layers(num_layers: int) -> tuple[list[int], list[int]]:
    """config.yaml's layers for the 33-layer model; as many, spread evenly, for smaller shapes."""
    if num_layers == 33:
        study = yaml.safe_load((REPO / "config.yaml").read_text())
        return study["patching"]["layers"], study["ig"]["layers"]

    def spread(n: int) -> list[int]:
        return sorted({max(1, round(num_layers * (i + 1) / (n + 1))) for i in range(n)})

    return spread(5), spread(8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="650m")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--mutants", type=int, default=50)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--cores", default="all")
    args = parser.parse_args()

    layers, width, heads = SHAPES[args.shape]
    patching, ig = study_layers(layers)
    work = args.workdir.resolve()
    checkpoint = work / "model" / f"esm2_{args.shape}_random.pt"
    sae_dir = work / "sae"
    pattern = f"esm2_plm{width}_l{{layer}}_sae{args.d_sae}.safetensors"
    if not checkpoint.exists():
        write_tiny_esm2(checkpoint, num_layers=layers, embed_dim=width, attention_heads=heads, seed=0)
    for layer in sorted(set(patching) | set(ig)):
        path = sae_dir / pattern.format(layer=layer)
        if not path.exists():
            save_sae(random_sae(width, args.d_sae, args.k, seed=layer), path)
    study = yaml.safe_load((REPO / "config.yaml").read_text())
    config = {
        "outdir": str(work / "results"),
        "esm_checkpoint": str(checkpoint),
        "device": args.device,
        "precision": args.precision,
        "sae": {"dir": str(sae_dir), "pattern": pattern, "k": args.k},
        "proteins": {name: {"dms": None} for name in study["proteins"]},
        "mutations": {"source": "model", "n": args.mutants},
        "patching": {"layers": patching},
        "ig": {"layers": ig, "steps": 32},
    }
    config_path = work / "study.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO),
           "--configfile", str(REPO / "config.yaml"), str(config_path), "--cores", args.cores,
           "--rerun-incomplete", "--forceall"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, check=False)
    wall = time.perf_counter() - start
    per_rule: dict[str, float] = defaultdict(float)
    for tsv in (work / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        rule = rule if tsv.parent.name not in ("figures",) else f"plot_{tsv.stem}"
        per_rule[rule] += float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    print(f"\nshape {args.shape} ({layers} layers, width {width}), device {args.device}, precision {args.precision}: "
          f"{len(study['proteins'])} proteins x {args.mutants} mutants, patching {patching}, IG {ig} x 32 steps")
    print(f"whole study: {wall:.1f} s wall ({wall / 60:.1f} min), snakemake exit {done.returncode}")
    for rule, seconds in sorted(per_rule.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:28s} {seconds:9.1f} s (summed over its jobs)")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
