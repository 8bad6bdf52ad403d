"""Speed of the three hot paths (patching, IG, circuits) against the seed's naive loop.

Random weights have the real cost, so a model of the real shape needs no
download. For one WT sequence of the study's length it measures, in one run:

* batched: single-feature patches through the engine (cached WT prefix, one
  pass of blocks ℓ+1..N for a whole batch, LM head only at the mutated site);
* naive: the seed's way, one full forward of the model per intervention;
* IG: all quadrature steps of a mutant in one batch, with gradients;
* circuits: top-k patches for k = 0..max_k in one batch;

and prints interventions per second, achieved TFLOP/s (analytic count of the
matmuls), its fraction of `--peak-tflops` when given, and peak memory.

    python benchmarks/bench_engine.py --shape 35m --device cpu
    python benchmarks/bench_engine.py --shape 650m --device cuda --peak-tflops 67
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from esmsae.analyses.atp import attribution_patching
from esmsae.analyses.circuits import circuit_curve
from esmsae.analyses.graph import PairContext, link
from esmsae.analyses.ig import attribute
from esmsae.analyses.patching import changed_features, single_feature_patches
from esmsae.analyses.positions import spread
from esmsae.config.settings import CircuitSettings, IGSettings, PairSettings, PositionSettings
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.demo import tiny_esm2
from esmsae.model.esm import EsmLM, resolve_device
from esmsae.model.host import hold_freed_memory, reproducible_blas
from esmsae.model.sae import random_sae
from esmsae.model.splice import Splice

SHAPES = {  # layers, width, heads: ESM-2 checkpoints' shapes
    "tiny": (6, 64, 4),
    "35m": (12, 480, 20),
    "650m": (33, 1280, 20),
}
SEQ = "SFNTVDEWLEAIKMGQYKESFANAGFTSFDVVSQMMMEDILRVGVTLAGHQKKILNSIQVMRAQMN"  # EPHB2, 66 aa
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def suffix_flops(layers: int, width: int, tokens: int, vocab: int = 33, scored: int = 1) -> float:
    """Matmul FLOPs of one sequence through `layers` blocks plus the LM head at `scored` positions."""
    per_block = 2 * tokens * (4 * width * width + 2 * 4 * width * width) + 2 * 2 * tokens * tokens * width
    return layers * per_block + scored * 2 * (width * width + width * vocab)


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="35m")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--layer", type=int, help="splice layer (default: half the depth)")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="interventions per batched pass")
    parser.add_argument("--naive", type=int, default=16, help="interventions timed in the naive loop")
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--max-k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--graph-gap", type=int, default=2, help="blocks between the graph's two layers")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for this precision, for the fraction")
    args = parser.parse_args()

    blas = reproducible_blas()  # before any matmul, as every pipeline job does
    if args.threads:
        torch.set_num_threads(args.threads)
    held = hold_freed_memory()  # as every pipeline job does (esmsae.model.host.set_up_host)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    layers, width, heads = SHAPES[args.shape]
    layer = args.layer or layers // 2
    splice = build_splice(args, layers, width, heads, layer, device, DTYPES.get(args.precision, torch.float32))
    lm = splice.lm
    mutant = parse_mutant("M14K", SEQ)
    code = splice.wt_code([14])
    h_mut = splice.hidden([mutant.apply(SEQ)])[0, [14]]
    spec = splice.score_spec(mutant)
    tokens = splice.tokens.shape[1]

    # Distinct single-feature patches (distinct rows, so the engine runs every one).
    gen = torch.Generator(device="cpu").manual_seed(0)
    features = torch.randperm(args.d_sae, generator=gen)[: args.batch].to(device)
    z = patches(code, features)
    deltas = splice.delta(code, z)

    def batched():
        with torch.no_grad():
            splice.run(code.positions, deltas, spec)

    def naive():
        with torch.no_grad():
            for row in range(args.naive):
                h = lm.hidden(splice.tokens, layer).clone()  # the whole model, every time
                h[:, code.positions] += deltas[row:row + 1]
                lm.head(h, layer)

    # Faithfulness of what was timed: the engine against the naive loop's own logits, the
    # engine against itself at another batch size, and (below fp32) against fp32.
    effects = splice.resized(args.batch).effects(code, z, spec).effects
    other_size = splice.resized(7).effects(code, z, spec).effects
    with torch.no_grad():
        h = lm.hidden(splice.tokens, layer)
        naive_effects = []
        for row in [None, *range(args.naive)]:
            h_row = h.clone()
            if row is not None:
                h_row[:, code.positions] += deltas[row:row + 1]
            logp = torch.log_softmax(lm.head(h_row, layer)[0, 14].float(), -1)
            naive_effects.append(logp[spec.mut[0]] - logp[spec.wt[0]])
        naive_effects = torch.stack(naive_effects[1:]) - naive_effects[0]
    vs_naive = float((effects[: args.naive].float() - naive_effects).abs().max())
    vs_size = float((effects - other_size).abs().max())
    drift = None
    if args.precision != "fp32":
        ref = build_splice(args, layers, width, heads, layer, device, torch.float32)
        ref_code = ref.wt_code([14])
        ref_effects = ref.resized(args.batch).effects(ref_code, patches(ref_code, features), spec)
        drift = (float((effects.float() - ref_effects.effects).abs().max()),
                 float((splice.effects(code, z[:1], spec).baseline - ref_effects.baseline[:1]).abs().max()))
        del ref

    t_batch = timed(batched, device, args.repeats)
    t_naive = timed(naive, device, max(1, args.repeats // 2))
    rate_batch = args.batch / t_batch
    rate_naive = args.naive / t_naive
    flops = suffix_flops(layers - layer, width, tokens) * (args.batch + 0)
    tflops = flops / t_batch / 1e12

    ig_settings = IGSettings(space="latent", steps=args.ig_steps, rule="gausslegendre", error_node=True)
    ig_view = splice.resized(max(args.ig_steps, 1)).view(mutant, h_mut, "latent")
    t_ig = timed(lambda: attribute(ig_view, ig_settings), device, 1)
    circ = CircuitSettings(space="latent", max_k=args.max_k)
    circuit_view = splice.resized(args.max_k + 2).view(mutant, h_mut, "latent")
    # Rank like IG does: only features whose latent moved carry attribution.
    mut_code = splice.mutant_code(h_mut, code)
    attribution = (mut_code.z - code.z).abs().sum(0).float() + 1e-6 * torch.rand(args.d_sae, generator=gen).to(device)
    t_circ = timed(lambda: circuit_curve(circuit_view, circ, attribution), device, 1)

    # AtP (one backward pass) against exact patching of the same mutant's changed set, and the spread
    # over positions (one row per token and one for all of them), each through its analysis function.
    mutant_view = splice.resized(None).view(mutant, splice.hidden([mutant.apply(SEQ)])[0], "latent")
    n_changed = len(changed_features(mutant_view))
    t_atp = timed(lambda: attribution_patching(mutant_view, ig_settings), device, args.repeats)
    t_exact = timed(lambda: exact_effects(mutant_view), device, args.repeats)
    t_positions = timed(lambda: spread(mutant_view, PositionSettings(min_effect=0.0)), device, 1)

    # The cross-layer graph to a second random SAE `--graph-gap` blocks later (the demo's gap): every
    # changed feature at both layers alone, the measured edges and the held sets, all engine rows.
    layer2 = min(layer + args.graph_gap, layers)
    pair_settings = PairSettings(space="latent", max_edges=64, check_edges=16, hold=3, seed=0, layer2=layer2,
                                 k2=args.k)
    context = PairContext(random_sae(width, args.d_sae, args.k, seed=2).to(splice.sae.w_dec.dtype).to(device),
                          pair_settings)
    graph = link(mutant_view, pair_settings, context)
    t_graph = timed(lambda: link(mutant_view, pair_settings, context), device, 1)
    graph_rows = len(graph.nodes) + len(graph.edges) + 2 * len(graph.shares)

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        mem = f"{peak:.0f} MiB GPU (max allocated)"
    else:
        mem = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS (process peak)"
    print(f"shape {args.shape} ({layers} layers, width {width}), device {device}, precision {args.precision}, "
          f"threads {torch.get_num_threads()}, splice layer {layer}, {tokens} tokens, d_sae {args.d_sae}, k {args.k}, "
          f"freed memory {'held' if held else 'returned to the OS'}")
    print(f"batched patching : {rate_batch:10.1f} interventions/s  (batch {args.batch}, {t_batch * 1e3:.1f} ms/pass)")
    print(f"naive loop       : {rate_naive:10.1f} interventions/s  (one full forward each)")
    print(f"speed-up         : {rate_batch / rate_naive:10.2f} x")
    fraction = f", {tflops / args.peak_tflops:.1%} of {args.peak_tflops} peak" if args.peak_tflops else ""
    print(f"achieved         : {tflops:10.3f} TFLOP/s in the batched suffix{fraction}")
    print(f"IG               : {t_ig:10.3f} s per mutant ({args.ig_steps} steps, with gradients)")
    print(f"circuits         : {t_circ:10.3f} s per mutant (k = 0..{args.max_k})")
    print(f"AtP              : {t_atp:10.3f} s per mutant (one backward pass); exact patching of its {n_changed} "
          f"changed features {t_exact:.3f} s: {t_exact / t_atp:.1f} x the cost")
    print(f"positions        : {t_positions:10.3f} s per mutant ({tokens + 1} engine rows: every token, and all)")
    n_up = int((graph.nodes["layer"] == layer).sum())
    print(f"graph            : {t_graph:10.3f} s per mutant, layers {layer} -> {layer2} ({graph_rows} engine rows: "
          f"{n_up} + {len(graph.nodes) - n_up} changed features, {len(graph.edges)} measured edges of "
          f"{graph.n_candidates}, {len(graph.shares)} x 2 held sets; one backward pass)")
    print(f"peak memory      : {mem}")
    print(f"batched vs naive : {vs_naive:10.2e} max |Δ effect| over the {args.naive} naive interventions")
    print(f"batch 7 vs {args.batch:<5d} : {vs_size:10.2e} max |Δ effect| (0 expected on CPU at fp32, MKL_CBWR={blas};"
          " not on a GPU)")
    if drift:
        print(f"vs fp32          : {drift[0]:10.2e} max |Δ effect|, {drift[1]:.2e} |Δ WT-marginal score| "
              f"({args.precision} against an fp32 copy of the same weights)")


def exact_effects(view) -> torch.Tensor:
    """Exact single-feature effects of a mutant's changed set (the real rows of patching), one engine batch."""
    features = changed_features(view)
    return view.effects(single_feature_patches(view.start, view.end, features)).effects


def build_splice(args, layers: int, width: int, heads: int, layer: int, device: torch.device,
                 dtype: torch.dtype) -> Splice:
    """The random model and SAE of the chosen shape (fixed seeds), spliced into EPHB2's WT sequence."""
    lm = EsmLM(tiny_esm2(layers, width, heads, seed=0).to(dtype), device, activations="interprot")
    sae = random_sae(width, args.d_sae, args.k, seed=1).to(dtype)
    return Splice(lm, sae, SEQ, layer)


def patches(code, features: torch.Tensor) -> torch.Tensor:
    """One row per feature: the WT latents with that feature raised by 1.0."""
    z = code.z.expand(len(features), -1, -1).clone()
    z[torch.arange(len(features), device=z.device), 0, features] += 1.0
    return z


if __name__ == "__main__":
    main()
