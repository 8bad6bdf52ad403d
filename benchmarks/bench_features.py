"""Feature statistics over a reference FASTA: time and peak memory of the streaming pass, and engine rows.

Writes a FASTA of `--sequences` random sequences of length `--length` (ten thousand of length
300 by default), then runs the characterize_features rule's own code (`esmsae.analyses.
feature_activity.characterize_features`: streaming reader, padded batches, counts only, resume pieces) at one layer of a
random model of the chosen shape with a random TopK SAE, and prints the time and the process's peak
resident memory before and after the pass. Memory stays flat as `--sequences` grows: only counts and
one batch are held. It also counts the engine rows that output effects cost at that layer for the
WT sequences of the study: one row per (feature, active WT position), at most `max_positions` per
protein and feature, i.e. at most k rows per WT position.

    python benchmarks/bench_features.py --shape tiny --d-sae 256 --k 16       # the demo's shapes
    python benchmarks/bench_features.py --shape 650m --device cuda --sequences 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from esmsae.analyses.feature_activity import characterize_features
from esmsae.analyses.output_effects import effect_positions
from esmsae.config.parse import load
from esmsae.config.settings import Runtime
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.model.demo import write_tiny_esm2
from esmsae.model.esm import EsmLM, load_esm, resolve_device
from esmsae.model.host import hold_freed_memory, reproducible_blas
from esmsae.model.sae import open_sae, random_sae, save_sae

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"tiny": (6, 64, 4), "35m": (12, 480, 20), "650m": (33, 1280, 20)}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--layer", type=int, help="default: half the depth")
    parser.add_argument("--d-sae", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--sequences", type=int, default=10000)
    parser.add_argument("--length", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    reproducible_blas()  # before any matmul, as every pipeline job does
    torch.set_num_threads(args.threads)
    hold_freed_memory()
    layers, width, heads = SHAPES[args.shape]
    layer = args.layer or layers // 2
    study = load(yaml.safe_load((REPO / "config.yaml").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tiny_esm2(tmp / "model.pt", num_layers=layers, embed_dim=width, attention_heads=heads, seed=0)
        save_sae(random_sae(width, args.d_sae, args.k, seed=layer), tmp / "sae.safetensors")
        rng = np.random.default_rng(0)
        letters = np.array(list(AMINO_ACIDS))
        with open(tmp / "ref.fa", "w") as fh:
            for i in range(args.sequences):
                fh.write(f">r{i}\n{''.join(rng.choice(letters, args.length))}\n")
        settings = dataclasses.replace(study.features, reference=str(tmp / "ref.fa"), max_sequences=args.sequences)
        runtime = Runtime(device=args.device, batch_size=None, trust_pickle=False)
        before = peak_mib()
        start = time.perf_counter()
        characterize_features(settings, study.wt_seqs, layer, args.k, study.forward, runtime, tmp / "model.pt",
                              tmp / "sae.safetensors", tmp / "ref.fa", tmp / "activity.npz", tmp / "examples.csv")
        seconds = time.perf_counter() - start
        after = peak_mib()
        lm = EsmLM(load_esm(tmp / "model.pt"), resolve_device(args.device), activations="interprot")
        sae = open_sae(tmp / "sae.safetensors", args.k, lm, layer)
        rows = 0
        for seq in study.wt_seqs.values():
            with torch.no_grad():
                h = lm.hidden(lm.tokenize([seq]), layer)[0, 1:-1]
            _, z, _, _ = sae.encode(h)
            active = torch.nonzero((z > 0).any(0)).flatten().tolist()
            rows += sum(len(effect_positions(z, j, settings.max_positions)) for j in active)
    n_positions = args.sequences * args.length
    print(f"shape {args.shape} (layer {layer} of {layers}, width {width}), d_sae {args.d_sae}, k {args.k}, "
          f"device {args.device}, threads {torch.get_num_threads()}")
    print(f"activity pass: {args.sequences} sequences x {args.length} residues ({n_positions:,} positions) + "
          f"the 3 WT sequences in {seconds:.1f} s ({n_positions / seconds:,.0f} positions/s)")
    print(f"peak RSS     : {before:.0f} MiB before the pass, {after:.0f} MiB after (process peak)")
    print(f"output effects: at most {rows} engine rows at this layer, every active feature of the 3 WT "
          f"sequences at up to {settings.max_positions} positions each (shown features are a subset)")


if __name__ == "__main__":
    main()
