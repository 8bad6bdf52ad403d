"""Cost of the SAE-fidelity rule (measure_sae_quality) per layer, measured, and its FLOP count.

Random weights have the real cost. At one layer of a model of the chosen shape with a random TopK
SAE, it runs the rule's own per-forward measurement (`esmsae.analyses.sae_quality.layer_fidelity`:
reconstruction at k/2, k and 2k; KL with the reconstruction spliced in; masked-LM CE clean,
reconstructed and zeroed) over `--sequences` sequences of the study's length, on one forward, and
prints the time per sequence and the matmul FLOPs it ran. It then scales both to one layer of the
study (the WT sequences and the selected mutants, on both forwards, plus the task fidelity's WT
forwards) and prints the FLOP count of every analysed layer of the 650M study, with the time it would
take at a given sustained rate (`--tflops`): an estimate, not a GPU measurement.

    python benchmarks/bench_quality.py --shape 650m --layer 16 --sequences 4 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from esmsae.analyses.sae_quality import layer_fidelity
from esmsae.model.demo import tiny_esm2
from esmsae.model.esm import EsmLM
from esmsae.model.host import hold_freed_memory, reproducible_blas
from esmsae.model.sae import random_sae

SHAPES = {"tiny": (6, 64, 4), "35m": (12, 480, 20), "650m": (33, 1280, 20)}
SEQ = "SFNTVDEWLEAIKMGQYKESFANAGFTSFDVVSQMMMEDILRVGVTLAGHQKKILNSIQVMRAQMN"  # EPHB2, 66 aa
# The study in config.yaml: three proteins, 50 selected mutants each, these layers.
STUDY_SEQUENCES = 3 * (1 + 50)
STUDY_LAYERS = [4, 8, 12, 16, 20, 24, 28, 32]


def block_flops(width: int, tokens: int) -> float:
    """Matmul FLOPs of one sequence through one block (q, k, v, out; MLP; attention scores and values)."""
    return 2 * tokens * (4 * width * width + 2 * 4 * width * width) + 2 * 2 * tokens * tokens * width


def fidelity_flops(layers: int, width: int, tokens: int, layer: int, d_sae: int, sequences: int) -> float:
    """Matmul FLOPs of layer_fidelity on `sequences` sequences at `layer`, one forward.

    Per sequence: the prefix to ℓ twice (unmasked and masked), the suffix five times (unmasked clean and
    reconstructed, masked clean, reconstructed and zeroed), the SAE's encode and decode at three k plus
    the two splices (five encodes and decodes of L positions), and the LM head at every position five times.
    """
    blocks = 2 * layer + 5 * (layers - layer)
    sae = 5 * 2 * 2 * (tokens - 2) * width * d_sae
    head = 5 * 2 * tokens * (width * width + width * 33)
    return sequences * (blocks * block_flops(width, tokens) + sae + head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="650m")
    parser.add_argument("--layer", type=int, default=16)
    parser.add_argument("--sequences", type=int, default=4, help="sequences measured (the study has 153)")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", choices=["cpu"], default="cpu", help="the CPU (a GPU's cost is estimated)")
    parser.add_argument("--tflops", type=float, default=50.0,
                        help="sustained fp32/tf32 TFLOP/s assumed for the estimate (one H100: ~50 of its 67 "
                             "fp32 peak)")
    args = parser.parse_args()
    reproducible_blas()
    if args.threads:
        torch.set_num_threads(args.threads)
    hold_freed_memory()
    layers, width, heads = SHAPES[args.shape]
    lm = EsmLM(tiny_esm2(layers, width, heads, seed=0), "cpu", activations="interprot")
    sae = random_sae(width, args.d_sae, args.k, seed=1, layer=args.layer)
    seqs = [SEQ[i:] + SEQ[:i] for i in range(args.sequences)]  # the study's length, distinct
    layer_fidelity(lm, sae, args.layer, seqs[:1])  # warm-up
    start = time.perf_counter()
    row = layer_fidelity(lm, sae, args.layer, seqs)
    seconds = time.perf_counter() - start
    tokens = len(SEQ) + 2
    flops = fidelity_flops(layers, width, tokens, args.layer, args.d_sae, args.sequences)
    per_layer = 2 * fidelity_flops(layers, width, tokens, args.layer, args.d_sae, STUDY_SEQUENCES)
    study = sum(2 * fidelity_flops(layers, width, tokens, layer, args.d_sae, STUDY_SEQUENCES)
                for layer in STUDY_LAYERS if layer < layers)
    print(f"shape {args.shape} ({layers} layers, width {width}), layer {args.layer}, d_sae {args.d_sae}, k {args.k},"
          f" threads {torch.get_num_threads()}, {tokens} tokens")
    print(f"measured         : {seconds:8.2f} s for {args.sequences} sequences, one forward "
          f"({seconds / args.sequences:.2f} s per sequence; {flops / seconds / 1e12:.3f} TFLOP/s)")
    print(f"one study layer  : {per_layer / 1e12:8.2f} TFLOP ({STUDY_SEQUENCES} sequences, both forwards): "
          f"{per_layer / flops * seconds / 60:.1f} min on this CPU (scaled), "
          f"{per_layer / (args.tflops * 1e12):.1f} s at {args.tflops:g} TFLOP/s (estimate)")
    print(f"all study layers : {study / 1e12:8.2f} TFLOP over layers {STUDY_LAYERS}: "
          f"{study / (args.tflops * 1e12) / 60:.1f} min at {args.tflops:g} TFLOP/s (estimate)")
    print(f"fve {row['fve']:.4f}, kl {row['kl']:.4g}, loss recovered {row['loss_recovered']:.4f} "
          "(random weights: only the cost is meaningful)")


if __name__ == "__main__":
    main()
