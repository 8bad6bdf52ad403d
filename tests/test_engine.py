"""The invariants everything rests on, at every layer of a tiny model.

The reference for "the model" is always fair-esm's own ``ESM2.forward``; where a
residual vector must be replaced, a forward hook on fair-esm's module does it,
so the checks do not share code with the engine under test.
"""

from __future__ import annotations

import copy

import pytest
import torch

from esmsae.analyses.scoring import wt_log_probs, wt_marginal
from esmsae.inputs.mutations import parse_mutant
from esmsae.model.splice import Splice

from .conftest import FORWARDS, LAYERS, WT, splice_every_layer, watch_passes
from .reference import hooked_logits, interprot_forward, reference_logits, score_from_logits

SEQ = WT["PR40A_HUMAN"]
MUTANTS = ["W4A", "K7P", "F14G", "L17R", "N38Y"]


@pytest.fixture(scope="module")
def splices(lm, saes):
    return splice_every_layer(lm, saes, SEQ)


@pytest.mark.parametrize("layer", LAYERS)
def test_cut_reproduces_fair_esm(lm, layer):
    tokens = lm.tokenize([SEQ])
    with torch.no_grad():
        ref = lm.model(tokens, repr_layers=[layer])
        h = lm.hidden(tokens, layer)
        logits = lm.head(h, layer)
    # Bit for bit (CPU, fp32): the cut reuses fair-esm's modules, and the head's padding keeps its
    # few-row matmuls on the kernels of the full forward.
    assert torch.equal(h, ref["representations"][layer])
    assert torch.equal(logits, ref["logits"])
    for positions in ([3, 17, 40], [17]):
        with torch.no_grad():
            at = lm.head(h, layer, torch.tensor(positions))
        assert torch.equal(at, ref["logits"][:, positions])


@pytest.mark.parametrize("layer", LAYERS)
def test_sae_splice_without_intervention_is_the_model(lm, splices, layer):
    """Every position rebuilt as dec(z; μ, σ) + e: logits equal the model's own."""
    splice = splices[layer]
    all_positions = torch.arange(splice.h.shape[1])
    code = splice.wt_code(all_positions)
    rebuilt = splice.sae.decode(code.z, code.mu, code.sigma) + code.error
    assert (rebuilt - splice.h[0]).abs().max() <= 1e-5  # decode + error == input
    with torch.no_grad():
        logits = lm.head(rebuilt.unsqueeze(0), layer)[0]
        ref = lm.logits(splice.tokens)[0]
    assert (logits - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("layer", LAYERS)
def test_noop_patch_changes_score_by_exactly_zero(lm, splices, layer):
    splice = splices[layer]
    mutant = parse_mutant("F14G", SEQ)
    code = splice.wt_code([14])
    spec = splice.score_spec(mutant)
    noop = code.z.expand(5, -1, -1).clone()  # each row "patches" features to their WT values
    real = noop.clone()
    real[:, 0, :5] += torch.linspace(0.5, 2.5, 5).unsqueeze(1)
    rows = torch.cat([noop[:2], real, noop[2:]])  # no-ops mixed with real patches in one batch
    for batch_size in (1, 3, 128):
        out = splice.resized(batch_size).effects(code, rows, spec)
        assert torch.equal(out.effects[[0, 1, 7, 8, 9]], torch.zeros(5))
        assert bool((out.effects[2:7] != 0).all())
    baseline = float(out.baseline[0])
    expected = wt_marginal(lm, wt_log_probs(lm, SEQ), [mutant])[0]
    assert baseline == expected  # the unmodified row is the model's own WT-marginal score, exactly


@pytest.mark.parametrize("layer", LAYERS)
def test_patch_effects_match_fair_esm_forward(lm, splices, layer):
    """A few single-feature patches: engine effect == hooked fair-esm forward, from scratch."""
    splice = splices[layer]
    mutant = parse_mutant("L17R", SEQ)
    code = splice.wt_code([17])
    h_mut = splice.hidden([mutant.apply(SEQ)])[:, [17]]
    mut = splice.mutant_code(h_mut, code)
    changed = torch.nonzero(mut.z[0, 0] != code.z[0]).flatten()[:4]
    assert len(changed) > 0
    z = code.z.expand(len(changed), -1, -1).clone()
    z[torch.arange(len(changed)), 0, changed] = mut.z[0, 0, changed]
    out = splice.effects(code, z, splice.score_spec(mutant))
    base = score_from_logits(hooked_logits(lm, SEQ, layer, {}), lm, mutant)
    for row, feature in enumerate(changed.tolist()):
        z_new = code.z[0].clone()
        z_new[feature] = mut.z[0, 0, feature]
        vec = splice.sae.decode(z_new, code.mu[0], code.sigma[0]) + code.error[0]
        ref = score_from_logits(hooked_logits(lm, SEQ, layer, {17: vec}), lm, mutant) - base
        assert abs(float(out.effects[row]) - ref) <= 1e-5


@pytest.mark.parametrize("layer", LAYERS)
def test_mutant_code_rebuilds_the_mutant_representation(lm, splices, layer):
    """Splicing (z_mut, ẽ_mut) gives the mutant's own h_ℓ at the site(s), single and multi-site."""
    splice = splices[layer]
    for text in ("K7P", "W4A:N38Y"):
        mutant = parse_mutant(text, SEQ)
        positions = [s.pos for s in mutant.sites]
        code = splice.wt_code(positions)
        h_mut = splice.hidden([mutant.apply(SEQ)])[:, positions]
        mut = splice.mutant_code(h_mut, code)
        rebuilt = splice.sae.decode(mut.z, code.mu, code.sigma) + mut.error
        assert (rebuilt - h_mut).abs().max() <= 1e-5
        out = splice.effects(code, mut.z, splice.score_spec(mutant), error_delta=mut.error - code.error)
        direct = hooked_logits(lm, SEQ, layer, dict(zip(positions, h_mut[0], strict=True)))
        base = score_from_logits(hooked_logits(lm, SEQ, layer, {}), lm, mutant)
        assert abs(float(out.effects[0]) - (score_from_logits(direct, lm, mutant) - base)) <= 1e-5


@pytest.mark.parametrize("layer", LAYERS)
def test_batch_equals_single_runs(splices, layer):
    splice = splices[layer]
    mutant = parse_mutant("N38Y", SEQ)
    code = splice.wt_code([38])
    gen = torch.Generator().manual_seed(layer)
    bump = torch.rand(9, 1, code.z.shape[-1], generator=gen)
    z = code.z.expand(9, -1, -1) + bump * (torch.rand(bump.shape, generator=gen) < 0.05)
    err = 0.1 * torch.randn(9, 1, code.error.shape[-1], generator=gen)
    spec = splice.score_spec(mutant)
    batched = splice.resized(128).effects(code, z, spec, error_delta=err)
    singles = torch.cat([splice.effects(code, z[i:i + 1], spec, error_delta=err[i:i + 1]).effects for i in range(9)])
    assert torch.equal(batched.effects, singles)  # bit for bit: tests/test_batch_size.py has the rest
    assert bool((batched.effects != 0).any())


def test_pre_space_noop_is_exact_and_retopk_applies(splices):
    splice = splices[2]
    mutant = parse_mutant("W4A", SEQ)
    code = splice.wt_code([4])
    assert torch.equal(splice.latents(code.pre, "pre"), code.z)
    pre = code.pre.expand(2, -1, -1).clone()
    j = int(torch.argmin(code.pre[0]))  # the least active feature, pushed far above the rest
    pre[1, 0, j] = code.pre.max() + 10.0
    z = splice.latents(pre, "pre")
    assert int((z[1, 0] > 0).sum()) <= splice.sae.k and float(z[1, 0, j]) > 0
    out = splice.effects(code, z, splice.score_spec(mutant))
    assert float(out.effects[0]) == 0.0 and float(out.effects[1]) != 0.0
    with pytest.raises(ValueError, match="space"):
        splice.latents(pre, "post")


def test_run_is_differentiable_in_the_intervention(splices):
    """Gradients reach the site's latents (IG needs them) while the weights take none."""
    splice = splices[3]
    mutant = parse_mutant("F14G", SEQ)
    code = splice.wt_code([14])
    z = code.z.clone().unsqueeze(0).requires_grad_(True)
    score = splice.run(code.positions, splice.delta(code, z), splice.score_spec(mutant))
    (grad,) = torch.autograd.grad(score.sum(), z)
    assert grad.shape == z.shape and bool(grad.abs().sum() > 0)
    assert all(p.grad is None and not p.requires_grad for p in splice.lm.model.parameters())


def test_mutant_scores_equal_wt_marginal_definition(lm):
    """WT-marginal score from the model's logits, written out by hand, for single and double mutants."""
    logp = torch.log_softmax(lm.logits(lm.tokenize([SEQ]))[0], -1)
    for text in [*MUTANTS, "W4A:N38Y"]:
        mutant = parse_mutant(text, SEQ)
        expected = sum(float(logp[s.pos, lm.alphabet.get_idx(s.mut)] - logp[s.pos, lm.alphabet.get_idx(s.wt)])
                       for s in mutant.sites)
        assert abs(wt_marginal(lm, wt_log_probs(lm, SEQ), [mutant])[0] - expected) <= 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_engine_on_cuda_matches_cpu(tiny_dir, saes):
    from esmsae.model.esm import EsmLM, load_esm

    mutant = parse_mutant("L17R", SEQ)
    results = {}
    for device in ("cpu", "cuda"):
        lm = EsmLM(load_esm(tiny_dir / "esm2_tiny.pt"), device, activations="interprot")
        splice = Splice(lm, copy.deepcopy(saes[2]), SEQ, 2)  # Splice moves its SAE to the device
        code = splice.wt_code([17])
        mut = splice.mutant_code(splice.hidden([mutant.apply(SEQ)])[:, [17]], code)
        z = torch.cat([code.z.unsqueeze(0), mut.z])
        out = splice.effects(code, z, splice.score_spec(mutant))
        assert float(out.effects[0]) == 0.0
        results[device] = out.effects.cpu()
    assert (results["cpu"] - results["cuda"]).abs().max() <= 1e-4


def test_identical_interventions_give_identical_numbers(splices):
    splice = splices[2]
    mutant = parse_mutant("K7P", SEQ)
    code = splice.wt_code([7])
    mut = splice.mutant_code(splice.hidden([mutant.apply(SEQ)])[0, [7]], code)
    rows = torch.stack([mut.z, code.z, mut.z, mut.z, code.z, mut.z])
    for batch_size in (1, 2, 128):
        out = splice.resized(batch_size).effects(code, rows, splice.score_spec(mutant))
        assert torch.equal(out.scores[[0, 2, 3, 5]], out.scores[0].expand(4))
        assert torch.equal(out.effects[[1, 4]], torch.zeros(2)) and float(out.effects[0]) != 0.0
    empty = splice.effects(code, rows[:0], splice.score_spec(mutant))
    assert empty.effects.shape == (0,)


def test_bf16_runs_exact_noops_and_stays_close_to_fp32(tiny_dir, saes):
    """A lower precision keeps the invariants that are exact by construction, and reports its drift."""
    from esmsae.model.esm import EsmLM, load_esm, set_precision

    mutant = parse_mutant("L17R", SEQ)
    effects = {}
    for precision in ("fp32", "bf16"):
        lm = EsmLM(set_precision(load_esm(tiny_dir / "esm2_tiny.pt"), precision), "cpu", activations="interprot")
        splice = Splice(lm, copy.deepcopy(saes[2]), SEQ, 2)
        code = splice.wt_code([17])
        mut = splice.mutant_code(splice.hidden([mutant.apply(SEQ)])[0, [17]], code)
        out = splice.effects(code, torch.stack([code.z, mut.z]), splice.score_spec(mutant))
        assert float(out.effects[0]) == 0.0 and out.scores.dtype == torch.float32
        effects[precision] = out
    # bf16 keeps ~3 significant digits: on this tiny model the score moves by ~0.3 (measured), so
    # only a gross error fails here; the pipeline logs the drift of every bf16 run against fp32.
    drift = abs(float(effects["bf16"].baseline[0] - effects["fp32"].baseline[0]))
    assert 0.0 < drift <= 1.0
    assert abs(float(effects["bf16"].effects[1] - effects["fp32"].effects[1])) <= 1.0


def test_rows_per_pass_fits_free_memory(splices, monkeypatch):
    """CPU: a fixed 128 (reproducible). CUDA: free memory over one row's activations, fewer with gradients."""
    from esmsae.model import batching

    passes = copy.copy(splices[1].passes)
    assert passes.rows_per_pass() == batching.CPU_ROWS == passes.rows_per_pass(grad=True)
    passes.lm = copy.copy(passes.lm)
    passes.lm.device = torch.device("cuda")
    monkeypatch.setattr(batching, "free_memory", lambda device: 2**30)
    t, e, heads = splices[1].h.shape[1], passes.lm.embed_dim, passes.lm.model.attention_heads
    one_block = (t * 16 * e + 3 * heads * t * t + 2 * t * e) * 4 * 2
    assert passes.rows_per_pass() == min(batching.MAX_ROWS, int(0.5 * 2**30 // one_block))
    deep = passes.rows_per_pass(grad=True)
    assert 1 <= deep < passes.rows_per_pass()
    monkeypatch.setattr(batching, "free_memory", lambda device: 1)
    assert passes.rows_per_pass(grad=True) == 1  # never zero


def test_out_of_memory_shrinks_the_passes_and_gives_the_same_numbers(splices, monkeypatch):
    """A device that fits 4 rows a pass: the engine settles on passes that fit, and every number is unchanged."""
    splice = splices[2].resized(64)
    mutant = parse_mutant("N38Y", SEQ)
    code = splice.wt_code([38])
    gen = torch.Generator().manual_seed(5)
    z = code.z.expand(20, -1, -1) + torch.rand(20, 1, code.z.shape[-1], generator=gen)
    spec = splice.score_spec(mutant)
    reference = splices[2].resized(3).effects(code, z, spec)
    passes = watch_passes(monkeypatch, splice, fits=4)
    out = splice.effects(code, z, spec)
    assert torch.equal(out.effects, reference.effects)
    ran = [n for n, _ in passes if n <= 4]
    assert sum(ran) - len(ran) == 20  # every intervention ran once (each pass adds one baseline row)
    assert passes[0][0] == 21  # it tried the configured size first ...
    again = watch_passes(monkeypatch, splice, fits=4)
    splice.effects(code, z, spec)
    assert max(n for n, _ in again) <= 4  # ... and keeps the size that fits for the rest of the job


# -- both forwards (METHOD.md "Which forward the SAEs read") ----------------------------------------------------------
@pytest.mark.parametrize("layer", LAYERS)
def test_interprot_hidden_equals_interprot_own_forward_and_fair_esm_its_repr_layers(lms, layer):
    """h_ℓ of the interprot forward is InterProt's (unscaled embeddings; before the final norm at ℓ = N);
    the fair-esm forward's is fair-esm's representations[ℓ]; they differ (0.88 rescaling, final norm)."""
    tokens = lms["interprot"].tokenize([SEQ])
    with torch.no_grad():
        inter = lms["interprot"].hidden(tokens, layer)
        fair = lms["fair-esm"].hidden(tokens, layer)
        ref = lms["fair-esm"].model(tokens, repr_layers=[layer])["representations"][layer]
    own, own_logits = interprot_forward(lms["interprot"].model, tokens, layer)
    assert torch.equal(inter, own)
    assert torch.equal(fair, ref)
    assert not torch.allclose(inter, fair, atol=1e-3)
    with torch.no_grad():
        assert torch.equal(lms["interprot"].head(inter, layer), own_logits)
        assert torch.equal(lms["interprot"].logits(tokens), own_logits)
        assert not torch.allclose(lms["interprot"].logits(tokens), lms["fair-esm"].logits(tokens), atol=1e-4)


def test_interprot_embeddings_are_unscaled_and_fair_esm_scaled_by_0_88(lms):
    tokens = lms["interprot"].tokenize([SEQ])
    with torch.no_grad():
        raw = lms["interprot"].model.embed_tokens(tokens)
        assert torch.equal(lms["interprot"].embed(tokens), raw)
        assert torch.allclose(lms["fair-esm"].embed(tokens), raw * (1 - 0.15 * 0.8), atol=0, rtol=1e-6)


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("layer", LAYERS)
def test_splice_reproduces_each_forwards_logits_and_noop_is_zero(lms, saes, forward, layer):
    """On either forward the spliced model is that forward's model: rebuilt logits equal its own, a no-op
    is exactly 0.0, and single-feature patches equal its independent reference forward with h_ℓ replaced."""
    lm = lms[forward]
    splice = Splice(lm, saes[layer], SEQ, layer)
    code = splice.wt_code(torch.arange(splice.h.shape[1]))
    rebuilt = splice.sae.decode(code.z, code.mu, code.sigma) + code.error
    with torch.no_grad():
        assert (lm.head(rebuilt.unsqueeze(0), layer)[0] - lm.logits(splice.tokens)[0]).abs().max() <= 1e-5
    mutant = parse_mutant("L17R", SEQ)
    site = splice.wt_code([17])
    mut = splice.mutant_code(splice.hidden([mutant.apply(SEQ)])[:, [17]], site)
    changed = torch.nonzero(mut.z[0, 0] != site.z[0]).flatten()[:3]
    z = site.z.expand(len(changed) + 1, -1, -1).clone()  # row 0: a no-op
    z[torch.arange(1, len(changed) + 1), 0, changed] = mut.z[0, 0, changed]
    out = splice.effects(site, z, splice.score_spec(mutant))
    assert float(out.effects[0]) == 0.0
    assert float(out.baseline[0]) == wt_marginal(lm, wt_log_probs(lm, SEQ), [mutant])[0]
    base = score_from_logits(reference_logits(lm, SEQ, layer, {}), lm, mutant)
    for row, feature in enumerate(changed.tolist(), start=1):
        z_new = site.z[0].clone()
        z_new[feature] = mut.z[0, 0, feature]
        vec = splice.sae.decode(z_new, site.mu[0], site.sigma[0]) + site.error[0]
        ref = score_from_logits(reference_logits(lm, SEQ, layer, {17: vec}), lm, mutant) - base
        assert abs(float(out.effects[row]) - ref) <= 1e-5


def test_a_forward_must_be_named(tiny_dir):
    from esmsae.model.esm import EsmLM, load_esm
    from esmsae.pipeline.errors import InputError

    model = load_esm(tiny_dir / "esm2_tiny.pt")
    with pytest.raises(TypeError):
        EsmLM(model, "cpu")  # no silent default
    with pytest.raises(InputError, match="sae.activations"):
        EsmLM(model, "cpu", activations="fair_esm")
