"""The intervention engine: an SAE spliced into ESM-2's residual stream at layer ℓ.

METHOD.md "Splice and intervention": at the intervened sites the residual vector
is rebuilt as ``h'_i = dec(z'; μ, σ) + e'`` with the WT statistics ``μ, σ``; all
other positions keep their WT values, and ``F_ℓ`` (blocks ℓ+1..N, final norm, LM
head) turns it into logits.

Every analysis sees a mutant through one :class:`MutantView`, built once by the
engine: its sites, the WT and mutant codes there, the values in the intervention
space, the score. An analysis asks the view for the effects of a batch of
interventions (:meth:`MutantView.effects`) or for a differentiable score
(:meth:`MutantView.differentiate`); the engine owns the only batching policy:
de-duplication, chunks with a baseline row, checkpointed passes, and halving the
rows per pass when a pass runs out of memory.

Two choices keep the numbers faithful:

* The WT run up to layer ℓ is computed once and cached; a batch of B
  interventions runs only the suffix, once, for all B rows.
* The spliced vector is computed as a change from the WT vector,
  ``h'_i = h_i + (z' − z_wt) w_dec σ + (e' − e_wt)``. Because the decoder is
  affine this equals ``dec(z') + e'``, and when ``z' = z_wt, e' = e_wt`` the change
  is exactly zero, so a no-op intervention reproduces ``h`` bit for bit rather
  than to rounding. Every chunk of a batch also carries one unmodified row, and
  effects are measured against it, so a no-op effect is exactly 0.0.

And one keeps them reproducible: a row's numbers do not depend on how many
rows share its pass (on CPU at fp32, bit for bit; :mod:`esmsae.rows` pads the
few matmuls that could see too few rows), so the batch size is a speed knob only.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from esmsae.errors import InputError
from esmsae.esm import EsmLM
from esmsae.mutations import Mutant
from esmsae.sae import TopKSAE
from esmsae.settings import SPACES

log = logging.getLogger(__name__)
T = TypeVar("T")

# Interventions per pass on CPU (fixed: free memory is no constraint there), and the most per
# pass anywhere.
CPU_ROWS, MAX_ROWS = 128, 1024
# Share of the GPU's free memory a batch may plan to use.
MEMORY_SHARE = 0.5


def free_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


@dataclass(frozen=True)
class SiteCode:
    """The SAE's reading of the residual stream at the intervened sites.

    Features and the error term travel together. Shapes: ``pre`` and ``z`` are
    (..., S, d_sae), ``error`` is (..., S, d), ``mu``/``sigma`` are (S, 1) — the
    WT statistics that every decode at these sites uses.
    """

    positions: Tensor
    pre: Tensor
    z: Tensor
    error: Tensor
    mu: Tensor
    sigma: Tensor


@dataclass(frozen=True)
class ScoreSpec:
    """What a run scores: ``Σ_p log p(mut_p) − log p(wt_p)`` at token positions ``positions``."""

    positions: Tensor
    wt: Tensor
    mut: Tensor


@dataclass(frozen=True)
class Effects:
    """Scores of a batch of interventions and their change from the unmodified run."""

    scores: Tensor    # (B,) S' for each intervention
    baseline: Tensor  # (B,) S of the unmodified row run beside it (the mutant's WT-marginal score)
    effects: Tensor   # (B,) scores − baseline; exactly 0.0 for a no-op


class Splice:
    """ESM-2 with a TopK SAE spliced in after block `layer`, for one WT sequence.

    `batch_size` (interventions per pass; None sizes passes from free memory) is a
    runtime knob: it changes how fast the engine runs, never a number it returns.
    """

    def __init__(self, lm: EsmLM, sae: TopKSAE, wt_seq: str, layer: int, batch_size: int | None = None, *,
                 protein: str = ""):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.protein = protein
        self._rows: dict[bool, int] = {}  # rows per pass, without and with gradients, once sized
        self.lm = lm
        self.layer = lm.check_layer(layer)
        if sae.info.d_in != lm.embed_dim:
            raise ValueError(f"SAE width {sae.info.d_in} != model width {lm.embed_dim}")
        self.sae = sae.to(device=lm.device, dtype=lm.dtype)
        self.wt_seq = lm.check_sequence(wt_seq, "WT sequence")
        self.tokens = lm.tokenize([wt_seq])
        with torch.no_grad():
            self.h = lm.hidden(self.tokens, self.layer)  # (1, T, d), the cached WT prefix
        if not bool(torch.isfinite(self.h).all()):
            raise InputError(f"layer {self.layer}: the model's activations on the WT sequence contain NaN or Inf "
                             "(check the checkpoint's weights and the precision)")

    # -- reading the SAE code --------------------------------------------------
    def wt_code(self, positions: Tensor) -> SiteCode:
        """The WT sequence's latents and error at `positions` (token indices)."""
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.lm.device)
        x = self.h[0, positions]
        pre, z, mu, sigma = self.sae.encode(x)
        error = x - self.sae.decode(z, mu, sigma)
        return SiteCode(positions, pre, z, error, mu, sigma)

    def mutant_code(self, h_sites: Tensor, wt: SiteCode) -> SiteCode:
        """A mutant's latents at the sites, with its error measured against the WT statistics.

        ``z_mut`` comes from the mutant's own encode; ``ẽ_mut = h_mut − dec(z_mut; μ_wt, σ_wt)``,
        so splicing ``(z_mut, ẽ_mut)`` into the WT run gives the mutant's vector there.
        `h_sites` is (..., S, d).
        """
        pre, z, _, _ = self.sae.encode(h_sites)
        error = h_sites - self.sae.decode(z, wt.mu, wt.sigma)
        return SiteCode(wt.positions, pre, z, error, wt.mu, wt.sigma)

    def rows_per_pass(self, grad: bool = False) -> int:
        """How many interventions one pass of the upper layers can take without running out of memory.

        On CUDA: a share of the free memory over an estimate of one row's activations
        through blocks ℓ+1..N (all of them kept when `grad`, for IG; the largest
        block's otherwise). On CPU a fixed number, so results do not depend on the
        machine's momentary free memory.
        """
        if self.lm.device.type != "cuda":
            return CPU_ROWS
        t, e = self.h.shape[1], self.lm.embed_dim
        heads = self.lm.model.attention_heads
        per_block = t * 16 * e + 3 * heads * t * t  # q, k, v, attention scores and softmax, MLP, norms
        blocks = max(1, self.lm.num_layers - self.layer) if grad else 1
        per_row = (blocks * per_block + 2 * t * e) * torch.finfo(self.lm.dtype).bits // 8 * 2
        rows = int(MEMORY_SHARE * free_memory(self.lm.device) // per_row)
        return max(1, min(MAX_ROWS, rows))

    def resized(self, batch_size: int | None) -> Splice:
        """This splice (sharing its model and cached WT run) with another batch size."""
        other = copy.copy(self)
        other.batch_size, other._rows = batch_size, {}
        return other

    def _pass_rows(self, grad: bool) -> int:
        if grad not in self._rows:
            self._rows[grad] = self.batch_size or self.rows_per_pass(grad=grad)
        return self._rows[grad]

    def _halving(self, attempt: Callable[[int], T], grad: bool) -> T:
        """``attempt(rows)`` with the current rows per pass; on running out of memory, halve and try again.

        The engine's one out-of-memory policy. The smaller size is kept for the rest of the
        job. Results do not depend on it (a row's numbers do not depend on its pass).
        """
        while True:
            rows = self._pass_rows(grad)
            try:
                return attempt(rows)
            except torch.OutOfMemoryError:
                if rows <= 1:
                    raise
                self._rows[grad] = max(1, rows // 2)
                log.warning("out of memory%s: retrying with %d rows per pass", " (gradients)" if grad else "",
                            self._rows[grad])
                if self.lm.device.type == "cuda":
                    torch.cuda.empty_cache()

    def hidden(self, seqs: list[str]) -> Tensor:
        """``h_ℓ`` of other sequences of the WT's length (e.g. mutants), (M, T, d)."""
        out, start = [], 0
        with torch.no_grad():
            while start < len(seqs):
                def forward(rows: int, start: int = start) -> Tensor:
                    return self.lm.hidden(self.lm.tokenize(seqs[start:start + rows]), self.layer)

                part = self._halving(forward, grad=False)
                out.append(part)
                start += part.shape[0]
        return torch.cat(out)

    def view(self, mutant: Mutant, states: Tensor, space: str) -> MutantView:
        """The one view of `mutant` every analysis gets.

        `states` is the mutant's own layer-ℓ residual stream: at every token (T, d), or only at
        its sites (S, d) for analyses that look nowhere else.
        """
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        positions = [s.pos for s in mutant.sites]
        full = states.shape[0] == self.h.shape[1]
        wt = self.wt_code(positions)
        return MutantView(engine=self, mutant=mutant, space=space, wt=wt,
                          mut=self.mutant_code(states[positions] if full else states, wt),
                          spec=self.score_spec(mutant), hidden=states if full else None)

    def residual_effects(self, positions: Tensor, deltas: Tensor, spec: ScoreSpec) -> Effects:
        """Scores of B raw changes `deltas` (B, P, d) of the residual stream at token `positions` (P,),
        no SAE involved, against the unmodified run (the engine's batching policy)."""
        scores, base = self._batched(deltas, lambda batch: self.run(positions, batch, spec))
        return Effects(scores=scores, baseline=base, effects=scores - base)

    def latents(self, values: Tensor, space: str) -> Tensor:
        """Latent vectors from intervened values: as they are in `latent` space, re-TopK'd in `pre`."""
        if space == "latent":
            return values
        if space == "pre":
            return self.sae.topk(values)
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")

    # -- running interventions ---------------------------------------------------
    def score_spec(self, mutant: Mutant) -> ScoreSpec:
        """Score `mutant` at its own sites (residue i is token i)."""
        dev = self.lm.device
        for site in mutant.sites:
            if self.wt_seq[site.pos - 1] != site.wt:
                raise ValueError(f"{mutant.name}: WT residue {site.wt}{site.pos} disagrees with the sequence")
        return ScoreSpec(
            positions=torch.tensor([s.pos for s in mutant.sites], device=dev),
            wt=torch.tensor([self.lm.token_index(s.wt) for s in mutant.sites], device=dev),
            mut=torch.tensor([self.lm.token_index(s.mut) for s in mutant.sites], device=dev),
        )

    def delta(self, wt: SiteCode, z: Tensor, error_delta: Tensor | None = None) -> Tensor:
        """``h' − h`` at the sites for latents `z` (B, S, d_sae) and error change ``e' − e_wt``."""
        change = self.sae.decode_delta(z - wt.z, wt.sigma)
        return change if error_delta is None else change + error_delta

    def log_probs(self, positions: Tensor, delta: Tensor, at: Tensor) -> Tensor:
        """Log-probabilities (B, P, V) at token positions `at` with ``h' = h + delta`` at `positions`.

        `delta` is (B, S, d). Differentiable in `delta`; the model's weights take no gradients.
        """
        batch = delta.shape[0]
        h = self.h.expand(batch, -1, -1).clone()
        h[:, positions] = h[:, positions] + delta
        logits = self.lm.head(h, self.layer, at)
        return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)

    def run(self, positions: Tensor, delta: Tensor, spec: ScoreSpec) -> Tensor:
        """Scores (B,) with ``h' = h + delta`` at `positions`: ``Σ log p(mut) − log p(wt)`` at the spec's positions."""
        batch = delta.shape[0]
        logp = self.log_probs(positions, delta, spec.positions)
        gain = logp.gather(-1, spec.mut.expand(batch, -1).unsqueeze(-1))
        loss = logp.gather(-1, spec.wt.expand(batch, -1).unsqueeze(-1))
        return (gain - loss).squeeze(-1).sum(-1)

    def run_in_passes(self, positions: Tensor, delta: Tensor, spec: ScoreSpec, rows: int) -> Tensor:
        """:meth:`run` over all B rows of `delta`, at most `rows` per pass of the upper layers.

        With gradients on (IG), each pass is checkpointed: only its input is kept,
        and its activations are recomputed in the backward pass one pass at a
        time, so memory is that of `rows` rows whatever B is. The rows come out
        as they would from one pass (a row's numbers do not depend on its pass).
        """
        if rows < 1:
            raise ValueError("rows must be >= 1")
        if delta.shape[0] <= rows:
            return self.run(positions, delta, spec)
        passes = delta.split(rows)
        if torch.is_grad_enabled():
            return torch.cat([checkpoint(self.run, positions, part, spec, use_reentrant=False) for part in passes])
        return torch.cat([self.run(positions, part, spec) for part in passes])

    def effects(self, wt: SiteCode, z: Tensor, spec: ScoreSpec, error_delta: Tensor | None = None) -> Effects:
        """Scores of B interventions (latents `z` (B, S, d_sae), optional error change) against the unmodified run."""
        scores, base = self._batched(self.delta(wt, z, error_delta),
                                     lambda batch: self.run(wt.positions, batch, spec))
        return Effects(scores=scores, baseline=base, effects=scores - base)

    def log_prob_changes(self, wt: SiteCode, z: Tensor, tokens: Tensor) -> Tensor:
        """``log p'(a) − log p(a)`` (B, S, A) at the intervened sites for token ids `tokens` (A,), for B
        interventions on the latents `z` (B, S, d_sae) (error at WT); exactly 0 for a no-op."""
        changed, base = self._batched(self.delta(wt, z),
                                      lambda batch: self.log_probs(wt.positions, batch, wt.positions)[..., tokens])
        return changed - base

    def _batched(self, deltas: Tensor, readout: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """``readout`` of B residual changes `deltas` (B, S, d), and of the unmodified run beside each.

        The engine's one batching policy. Identical rows are run once and share one
        result, and a row whose change is exactly zero is not run at all: it leaves
        ``h`` bit-identical, so its result is the baseline. Each chunk carries one
        unmodified row first and results are measured against it. So a no-op is
        exactly 0.0 and equal interventions give equal numbers on any hardware,
        where re-running them at other rows of a batched matmul could differ in the
        last bit on a GPU. Chunks are as large as a pass may be (:meth:`_halving`).
        """
        if deltas.shape[0] == 0:
            with torch.no_grad():
                empty = readout(deltas.new_zeros((1, *deltas.shape[1:])))[:0]  # only its shape is used
            return empty, empty
        flat = deltas.flatten(1)
        unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
        todo = torch.nonzero(unique.ne(0).any(-1)).flatten()  # unique rows that change h
        out = base = first_base = None
        with torch.no_grad():
            start = 0
            while start < max(len(todo), 1):
                def chunk(rows: int, start: int = start) -> tuple[Tensor, Tensor]:
                    part = todo[start:start + rows]
                    batch = torch.cat([torch.zeros_like(unique[:1]), unique[part]]).reshape(-1, *deltas.shape[1:])
                    return part, readout(batch)

                part, values = self._halving(chunk, grad=False)
                if out is None:
                    out = values.new_empty((len(unique), *values.shape[1:]))
                    base = values.new_empty((len(unique), *values.shape[1:]))
                    first_base = values[0]
                out[part], base[part] = values[1:], values[0]
                start += max(len(part), 1)
        idle = torch.ones(len(unique), dtype=torch.bool, device=deltas.device)
        idle[todo] = False
        out[idle] = first_base
        base[idle] = first_base
        return out[inverse], base[inverse]

    def differentiate(self, wt: SiteCode, spec: ScoreSpec, space: str, use: Callable[[ScoreFn], T]) -> T:
        """``use(score)``, where ``score(values, error_delta=None)`` gives differentiable scores (B,).

        `values` (B, S, d_sae) are in `space`; ``score`` runs its B rows in checkpointed
        passes (:meth:`run_in_passes`). If a pass runs out of memory, the rows per pass
        halve and ``use`` runs again from the start, so it must not keep state between calls.
        """
        def attempt(rows: int) -> T:
            def score(values: Tensor, error_delta: Tensor | None = None) -> Tensor:
                delta = self.delta(wt, self.latents(values, space), error_delta)
                return self.run_in_passes(wt.positions, delta, spec, rows)

            return use(score)

        return self._halving(attempt, grad=True)


ScoreFn = Callable[..., Tensor]


@dataclass(frozen=True)
class MutantView:
    """One mutant at the splice's layer, as every analysis sees it (built by :meth:`Splice.view`).

    ``start`` and ``end`` are the WT and mutant values in the intervention ``space``
    (``z`` in ``latent``, ``pre`` in ``pre``), each (S, d_sae) over the mutant's sites;
    ``error_change`` is ``ẽ_mut − e_wt`` (S, d). Interventions are values in that space.
    """

    engine: Splice = field(repr=False)
    mutant: Mutant
    space: str
    wt: SiteCode
    mut: SiteCode
    spec: ScoreSpec
    hidden: Tensor | None = field(default=None, repr=False)  # the mutant's h_ℓ at every token (T, d)

    @property
    def protein(self) -> str:
        return self.engine.protein

    @property
    def layer(self) -> int:
        return self.engine.layer

    @property
    def start(self) -> Tensor:
        return self.wt.z if self.space == "latent" else self.wt.pre

    @property
    def end(self) -> Tensor:
        return self.mut.z if self.space == "latent" else self.mut.pre

    @property
    def error_change(self) -> Tensor:
        return self.mut.error - self.wt.error

    def latents(self, values: Tensor) -> Tensor:
        """The latent vectors that `values` in this view's space stand for."""
        return self.engine.latents(values, self.space)

    def effects(self, values: Tensor, error_delta: Tensor | None = None) -> Effects:
        """Scores of B interventions, `values` (B, S, d_sae) in the view's space (the error at WT
        unless `error_delta`, (B, S, d), changes it), against the unmodified run."""
        return self.latent_effects(self.latents(values), error_delta)

    def latent_effects(self, z: Tensor, error_delta: Tensor | None = None) -> Effects:
        """As :meth:`effects`, for latent vectors `z` (B, S, d_sae) whatever the view's space."""
        return self.engine.effects(self.wt, z, self.spec, error_delta)

    def differentiate(self, use: Callable[[ScoreFn], T]) -> T:
        """``use(score)`` with a differentiable score of values in this view's space (:meth:`Splice.differentiate`)."""
        return self.engine.differentiate(self.wt, self.spec, self.space, use)


class LayerPair:
    """Two SAEs spliced into one run: interventions at layer ℓ1, latents read (and held) at ℓ2 > ℓ1.

    METHOD.md "Cross-layer feature graph". A row patches the ℓ1 sites by a residual change (as
    :class:`Splice` does), runs blocks ℓ1+1..ℓ2, encodes the sites with the ℓ2 SAE (the vectors'
    own statistics ``μ^a, σ^a``), optionally holds chosen ℓ2 features at their WT latents
    (``h'' = h^a − (z_b^a − z_b^wt) · w_dec_b · σ^a``), and runs the rest of the network. It returns
    the score and ``w = z^a − z^wt`` at ℓ2. With nothing changed the run is the model's own, bit for
    bit on CPU, and holding nothing changes nothing: the ℓ2 vectors go on exactly as they came.
    Batches go through the ℓ1 splice's batching policy.
    """

    def __init__(self, upper: Splice, sae2: TopKSAE, layer2: int):
        if layer2 <= upper.layer:
            raise ValueError(f"layer {layer2} is not after layer {upper.layer}")
        lm = upper.lm
        self.upper, self.lm, self.layer2 = upper, lm, lm.check_layer(layer2)
        if sae2.info.d_in != lm.embed_dim:
            raise ValueError(f"SAE width {sae2.info.d_in} != model width {lm.embed_dim}")
        self.sae2 = sae2.to(device=lm.device, dtype=lm.dtype)
        with torch.no_grad():
            self.h2 = lm.between(upper.h, upper.layer, layer2)  # the WT run at ℓ2

    def code2(self, positions) -> SiteCode:
        """The WT latents at ℓ2 at `positions` (token indices), with their own statistics."""
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.lm.device)
        x = self.h2[0, positions]
        pre, z, mu, sigma = self.sae2.encode(x)
        return SiteCode(positions, pre, z, x - self.sae2.decode(z, mu, sigma), mu, sigma)

    def run(self, positions: Tensor, delta: Tensor, hold: Tensor, spec: ScoreSpec, wt2: SiteCode) -> Tensor:
        """For B rows, change `delta` (B, S, d) at ℓ1 and hold mask `hold` (B, d_sae2): (B, 1 + S·d_sae2),
        the score then ``w = z^a − z^wt`` at the ℓ2 sites, flattened."""
        batch = delta.shape[0]
        h = self.upper.h.expand(batch, -1, -1).clone()
        h[:, positions] = h[:, positions] + delta
        h2 = self.lm.between(h, self.upper.layer, self.layer2)
        x = h2[:, positions]
        _, z, _, sigma = self.sae2.encode(x)
        w = z - wt2.z
        held = w * hold[:, None, :]
        if bool(held.ne(0).any()):
            h2 = h2.clone()
            h2[:, positions] = x - self.sae2.decode_delta(held, sigma)
        logits = self.lm.head(h2, self.layer2, spec.positions)
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        gain = logp.gather(-1, spec.mut.expand(batch, -1).unsqueeze(-1))
        loss = logp.gather(-1, spec.wt.expand(batch, -1).unsqueeze(-1))
        score = (gain - loss).squeeze(-1).sum(-1)
        return torch.cat([score.unsqueeze(1), w.flatten(1).to(score.dtype)], 1)

    def links(self, view: MutantView, values: Tensor, hold: Tensor) -> tuple[Effects, Tensor]:
        """B interventions at ℓ1 (`values` (B, S, d_sae1) in the view's space) with ℓ2 holds `hold`
        (B, d_sae2 bool): the effects on the score, and ``w`` (B, S, d_sae2) at ℓ2."""
        upper, wt = self.upper, view.wt
        deltas = upper.delta(wt, view.latents(values))
        rows = torch.cat([deltas.flatten(1), hold.to(deltas.dtype)], 1)
        width = deltas.shape[1] * deltas.shape[2]
        wt2 = self.code2(wt.positions)

        def readout(batch: Tensor) -> Tensor:
            return self.run(wt.positions, batch[:, :width].reshape(-1, *deltas.shape[1:]), batch[:, width:],
                            view.spec, wt2)

        out, base = upper._batched(rows.unsqueeze(1), lambda b: readout(b[:, 0]))
        effects = Effects(scores=out[:, 0], baseline=base[:, 0], effects=out[:, 0] - base[:, 0])
        return effects, out[:, 1:].reshape(len(rows), deltas.shape[1], -1)
