"""Every number is the same, bit for bit, whatever the batch size (CPU, fp32), at every layer.

CPU BLAS may compute a matmul row differently with the number of rows in the call: MKL
does unless its strict reproducibility mode is on (every job, and this suite, sets it:
``esmsae.model.host.reproducible_blas``), and the engine also pads the LM head's and the
SAE's inputs; IG hands captum all steps at once. These tests would catch any of that being
undone: they compare with ``torch.equal``, not a tolerance, at one and at two threads (CI's
cores), on the tiny model and at the 650M width.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from esmsae.analyses.circuits import circuit_curve
from esmsae.analyses.ig import attribute
from esmsae.analyses.patching import patch_protein
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.rows import MIN_ROWS, matmul

from .conftest import (
    LAYERS,
    WT,
    circuit_settings,
    ig_settings,
    mutant_states,
    patch_settings,
    splice_every_layer,
    view_of,
    watch_passes,
)

SEQ = WT["EPHB2_HUMAN"]
MUTANTS = [parse_mutant(t, SEQ) for t in ("F2A", "W8R", "S20P:G25W", "L47Q")]
SIZES = (1, 2, 3, 5, 8, 13, 128)


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splices(lm, saes):
    return splice_every_layer(lm, saes, SEQ)


def random_interventions(splice, positions, n, seed):
    """`n` rows moving a few features each, with an error change: the shape of every caller's batch."""
    code = splice.wt_code(positions)
    gen = torch.Generator().manual_seed(seed)
    bump = torch.rand(n, len(positions), code.z.shape[-1], generator=gen)
    z = code.z.expand(n, -1, -1) + bump * (torch.rand(bump.shape, generator=gen) < 0.1)
    error = 0.05 * torch.randn(n, *code.error.shape, generator=gen)
    return code, z, error


@pytest.mark.parametrize("n_threads", [1, 2])
def test_matmul_rows_do_not_depend_on_how_many_rows_share_the_call(n_threads):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(2 * MIN_ROWS, 3, 96, generator=gen), torch.randn(96, 40, generator=gen)
    with threads(n_threads):
        full = matmul(x, w)
        assert full.shape == (2 * MIN_ROWS, 3, 40)
        for n in (1, 2, 3, 5, 9, 17, MIN_ROWS // 3, MIN_ROWS):
            assert torch.equal(matmul(x[:n], w), full[:n])
            assert torch.equal(matmul(x[n, 1], w), full[n, 1])  # a lone vector


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("layer", LAYERS)
def test_effects_do_not_depend_on_the_batch_size(splices, layer, n_threads):
    splice = splices[layer]
    with threads(n_threads):
        for mutant in (MUTANTS[0], MUTANTS[2]):
            code, z, error = random_interventions(splice, [s.pos for s in mutant.sites], 21, seed=layer)
            spec = splice.score_spec(mutant)
            runs = [splice.resized(size).effects(code, z, spec, error_delta=error) for size in SIZES]
            for out in runs[1:]:
                assert torch.equal(out.scores, runs[0].scores)
                assert torch.equal(out.effects, runs[0].effects)
            assert bool((runs[0].effects != 0).all())


@pytest.mark.parametrize("n_threads", [1, 2])
def test_mutant_states_do_not_depend_on_the_batch_size(splices, n_threads):
    seqs = [m.apply(SEQ) for m in MUTANTS]
    with threads(n_threads):
        for splice in splices.values():
            runs = [splice.resized(size).hidden(seqs) for size in (1, 3, 128)]
            assert all(torch.equal(run, runs[0]) for run in runs[1:])


@pytest.mark.parametrize("layer", LAYERS)
def test_ig_does_not_depend_on_the_batch_size(splices, layer):
    splice = splices[layer]
    with threads(2):
        for mutant in (MUTANTS[1], MUTANTS[2]):
            h = mutant_states(splice, mutant)
            runs = [attribute(view_of(splice.resized(size), mutant, h), ig_settings(steps=12))
                    for size in (1, 5, 12, None)]
            for run in runs[1:]:
                assert torch.equal(run.attribution, runs[0].attribution)
                assert (run.error_attribution, run.total_effect) == (runs[0].error_attribution,
                                                                     runs[0].total_effect)
            assert bool((runs[0].attribution != 0).any())


def test_ig_runs_passes_of_at_most_the_batch_size_forward_and_backward(splices, monkeypatch):
    """Passes are checkpointed: the backward recomputes them one at a time, never all steps at once."""
    splice = copy.copy(splices[2])
    mutant = MUTANTS[1]
    h = mutant_states(splice, mutant)
    reference = attribute(view_of(splice, mutant, h), ig_settings(steps=12))
    sizes = watch_passes(monkeypatch, splice)
    out = attribute(view_of(splice.resized(5), mutant, h), ig_settings(steps=12))
    with_grad = [n for n, grad in sizes if grad]
    assert with_grad[:3] == [5, 5, 2]  # the steps, in three passes
    assert len(with_grad) >= 6  # ... and each pass run again by the backward
    assert max(n for n, _ in sizes) <= 5
    assert torch.equal(out.attribution, reference.attribution)


def test_ig_out_of_memory_shrinks_the_passes_and_gives_the_same_numbers(splices, monkeypatch):
    """A device that fits 4 rows a pass: IG ends with passes that fit, forward and backward, and equal numbers."""
    splice = splices[3].resized(16)
    mutant = MUTANTS[0]
    h = mutant_states(splice, mutant)
    reference = attribute(view_of(splices[3], mutant, h), ig_settings(steps=16))
    passes = watch_passes(monkeypatch, splice, fits=4)
    out = attribute(view_of(splice, mutant, h), ig_settings(steps=16))
    assert passes[0] == (16, True)  # it tried all steps in one pass first
    last_failure = max(i for i, (n, _) in enumerate(passes) if n > 4)
    after = passes[last_failure + 1:]
    assert after and all(n <= 4 for n, _ in after) and sum(n for n, grad in after if grad) >= 2 * 16
    assert torch.equal(out.attribution, reference.attribution)
    assert out.total_effect == reference.total_effect


def test_circuits_and_patching_tables_do_not_depend_on_the_batch_size(splices):
    splice = splices[2]
    with threads(2):
        mutant = MUTANTS[2]
        h = mutant_states(splice, mutant)
        attribution = attribute(view_of(splice, mutant, h), ig_settings(steps=8)).attribution
        curves = [circuit_curve(view_of(splice.resized(size), mutant, h), circuit_settings(max_k=20), attribution)
                  for size in (1, 4, None)]
        for curve in curves[1:]:
            assert np.array_equal(curve.patched_score, curves[0].patched_score)
            assert np.array_equal(curve.recovered_fraction, curves[0].recovered_fraction, equal_nan=True)
        tables = [patch_protein(splice.resized(size), MUTANTS, patch_settings())
                  for size in (2, 7, None)]
        for table in tables[1:]:
            assert table.equals(tables[0])
        assert len(tables[0]) > len(MUTANTS)


# -- at the real width: where MKL picks its GEMM kernel by the row count -------------------------------------------
# fc2 of an ESM-2 650M block (5120 -> 1280) at 2 threads: on an Intel Xeon with AVX-512 a row differs between a
# call of 7 interventions' rows (7 x 68 tokens) and one of 64 unless MKL runs in strict CNR mode.
GEMM_PROBE = """
import os, sys
if sys.argv[1] == "set-up":
    from esmsae.model.host import reproducible_blas
    reproducible_blas()
else:
    os.environ.pop("MKL_CBWR", None)
import torch
torch.set_num_threads(2)
torch.manual_seed(0)
x, w = torch.randn(64 * 68, 5120), torch.randn(1280, 5120) * 0.02
full = torch.nn.functional.linear(x, w)
print(max(float((torch.nn.functional.linear(x[:m].clone(), w) - full[:m]).abs().max()) for m in (68, 476, 1088)))
"""


def gemm_row_difference(mode: str) -> float:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    done = subprocess.run([sys.executable, "-c", GEMM_PROBE, mode], capture_output=True, text=True, check=True,
                          env=env, timeout=300)
    return float(done.stdout.split()[-1])


def test_a_jobs_set_up_makes_gemm_rows_independent_of_the_row_count_at_the_650m_shape():
    assert gemm_row_difference("set-up") == 0.0


def test_without_the_set_up_this_shape_is_one_where_the_kernel_choice_changes():
    """The control: the shape above does change MKL's kernel with the row count, on CPUs where MKL does that."""
    difference = gemm_row_difference("none")
    if difference == 0.0:
        pytest.skip("this CPU's BLAS computes these rows alike at every row count even without strict CNR")
    assert difference > 0.0


def test_effects_at_the_650m_width_do_not_depend_on_the_batch_size():
    """A two-block model of ESM-2 650M's width and heads, the SAE's real size, 68 tokens: batch 1, 7 and 64 agree."""
    from esmsae.model.demo import tiny_esm2
    from esmsae.model.esm import EsmLM
    from esmsae.model.sae import random_sae
    from esmsae.model.splice import Splice

    lm = EsmLM(tiny_esm2(num_layers=2, embed_dim=1280, attention_heads=20, seed=0), activations="interprot")
    splice = Splice(lm, random_sae(1280, 4096, 64, seed=1), SEQ, 1)
    mutant = parse_mutant("M14K", SEQ)
    code, z, error = random_interventions(splice, [14], 64, seed=3)
    spec = splice.score_spec(mutant)
    with threads(2):
        runs = [splice.resized(size).effects(code, z, spec, error_delta=error) for size in (64, 7, 1)]
    assert all(torch.equal(run.effects, runs[0].effects) for run in runs[1:])
    assert bool((runs[0].effects != 0).all())
