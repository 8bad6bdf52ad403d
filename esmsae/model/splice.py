"""The intervention engine: an SAE spliced into ESM-2's residual stream at layer ℓ, for one WT sequence.

METHOD.md "Splice and intervention": at the intervened sites the residual vector
is rebuilt as ``h'_i = dec(z'; μ, σ) + e'`` with the WT statistics ``μ, σ``; all
other positions keep their WT values, and ``F_ℓ`` (blocks ℓ+1..N, final norm, LM
head) turns it into logits.

Every analysis sees a mutant through one :class:`~esmsae.model.view.MutantView`, built
once here (:meth:`Splice.view`): its sites, the WT and mutant codes there
(:mod:`esmsae.model.code`), the values in the intervention space, the score. An analysis
asks the view for the effects of a batch of interventions or for a differentiable score;
:class:`Splice` runs them, and :mod:`esmsae.model.batching` decides how they are cut
into passes.

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
rows share its pass (on CPU at fp32, bit for bit; :mod:`esmsae.model.rows` pads the
few matmuls that could see too few rows), so the batch size is a speed knob only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from esmsae.config.settings import SPACES
from esmsae.inputs.mutations import Mutant
from esmsae.model.batching import Passes, in_passes
from esmsae.model.code import SiteCode, mutant_code, read_code
from esmsae.model.esm import EsmLM
from esmsae.model.sae import TopKSAE
from esmsae.model.view import MutantView, ScoreFn
from esmsae.pipeline.errors import InputError

T = TypeVar("T")


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


def score(logp: Tensor, spec: ScoreSpec) -> Tensor:
    """``Σ_p log p(mut_p) − log p(wt_p)`` (B,) from log-probabilities (B, P, V) at the spec's positions."""
    batch = logp.shape[0]
    gain = logp.gather(-1, spec.mut.expand(batch, -1).unsqueeze(-1))
    loss = logp.gather(-1, spec.wt.expand(batch, -1).unsqueeze(-1))
    return (gain - loss).squeeze(-1).sum(-1)


class Splice:
    """ESM-2 with a TopK SAE spliced in after block `layer`, for one WT sequence.

    `batch_size` (interventions per pass; None sizes passes from free memory) is a
    runtime knob: it changes how fast the engine runs, never a number it returns.
    """

    def __init__(self, lm: EsmLM, sae: TopKSAE, wt_seq: str, layer: int, batch_size: int | None = None, *,
                 protein: str = "", window: tuple[int, int] | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.protein = protein
        self.lm = lm
        self.layer = lm.check_layer(layer)
        if sae.info.d_in != lm.embed_dim:
            raise ValueError(f"SAE width {sae.info.d_in} != model width {lm.embed_dim}")
        self.sae = sae.to(device=lm.device, dtype=lm.dtype)
        # A sequence longer than the model's context runs on a slice of its tokens (METHOD.md "Long
        # sequences"): token t of the slice is token t + offset of the whole; residues keep their numbering.
        self.window = window
        self.offset = window[0] if window is not None else 0
        self.wt_seq = wt_seq if window is not None else lm.check_sequence(wt_seq, "WT sequence")
        self.tokens = lm.window_tokens([wt_seq], window)
        with torch.no_grad():
            self.h = lm.hidden(self.tokens, self.layer)  # (1, T, d), the cached WT prefix
        if not bool(torch.isfinite(self.h).all()):
            raise InputError(f"layer {self.layer}: the model's activations on the WT sequence contain NaN or Inf "
                             "(check the checkpoint's weights and the precision)")
        self.passes = Passes(lm, self.layer, self.h.shape[1], batch_size)
        self._residues: SiteCode | None = None

    @property
    def batch_size(self) -> int | None:
        return self.passes.batch_size

    def resized(self, batch_size: int | None) -> Splice:
        """This splice (sharing its model and cached WT run) with another batch size."""
        other = copy.copy(self)
        other.passes = Passes(self.lm, self.layer, self.h.shape[1], batch_size)
        return other

    # -- reading the SAE code --------------------------------------------------
    def wt_code(self, positions: Tensor) -> SiteCode:
        """The WT sequence's latents and error at `positions` (token indices)."""
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.lm.device)
        return read_code(self.sae, positions, self.h[0, positions])

    def token(self, residue: int) -> int:
        """The token of residue `residue` (1-based, the whole sequence's numbering) in this splice's tokens."""
        token = residue - self.offset
        if not 0 <= token < self.h.shape[1]:
            raise ValueError(f"residue {residue} lies outside the window {self.window}")
        return token

    def mutant_code(self, h_sites: Tensor, wt: SiteCode) -> SiteCode:
        """A mutant's code at the sites, its error against the WT statistics (see :mod:`esmsae.model.code`)."""
        return mutant_code(self.sae, h_sites, wt)

    def hidden(self, seqs: list[str]) -> Tensor:
        """``h_ℓ`` of other sequences of the WT's length (e.g. mutants), (M, T, d)."""
        out, start = [], 0
        with torch.no_grad():
            while start < len(seqs):
                def forward(rows: int, start: int = start) -> Tensor:
                    return self.lm.hidden(self.lm.window_tokens(seqs[start:start + rows], self.window), self.layer)

                part = self.passes.halving(forward, grad=False)
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
        positions = [self.token(s.pos) for s in mutant.sites]
        full = states.shape[0] == self.h.shape[1]
        wt = self.wt_code(positions)
        return MutantView(engine=self, mutant=mutant, space=space, wt=wt,
                          mut=self.mutant_code(states[positions] if full else states, wt),
                          spec=self.score_spec(mutant), hidden=states if full else None)

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
            positions=torch.tensor([self.token(s.pos) for s in mutant.sites], device=dev),
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
        return score(self.log_probs(positions, delta, spec.positions), spec)

    def run_in_passes(self, positions: Tensor, delta: Tensor, spec: ScoreSpec, rows: int) -> Tensor:
        """:meth:`run` over all B rows of `delta`, at most `rows` per pass (checkpointed with gradients)."""
        return in_passes(lambda part: self.run(positions, part, spec), delta, rows)

    def effects(self, wt: SiteCode, z: Tensor, spec: ScoreSpec, error_delta: Tensor | None = None) -> Effects:
        """Scores of B interventions (latents `z` (B, S, d_sae), optional error change) against the unmodified run."""
        scores, base = self.passes.batched(self.delta(wt, z, error_delta),
                                           lambda batch: self.run(wt.positions, batch, spec))
        return Effects(scores=scores, baseline=base, effects=scores - base)

    def residual_effects(self, positions: Tensor, deltas: Tensor, spec: ScoreSpec) -> Effects:
        """Scores of B raw changes `deltas` (B, P, d) of the residual stream at token `positions` (P,),
        no SAE involved, against the unmodified run."""
        scores, base = self.passes.batched(deltas, lambda batch: self.run(positions, batch, spec))
        return Effects(scores=scores, baseline=base, effects=scores - base)

    def residue_code(self) -> SiteCode:
        """The WT code at every residue (token positions 1..L), computed once."""
        if self._residues is None:
            if self.window is not None:
                raise ValueError("a windowed splice has no whole-sequence residue code")
            self._residues = self.wt_code(torch.arange(1, len(self.wt_seq) + 1))
        return self._residues

    def residue_log_probs(self, z: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities of token ids `tokens` (A,) at every residue, (B, L, A), with the latents at every
        residue set to `z` (B, L, d_sae) (error at WT), and those of the unmodified run beside each row."""
        code = self.residue_code()
        return self.passes.batched(self.delta(code, z),
                                   lambda batch: self.log_probs(code.positions, batch, code.positions)[..., tokens])

    def log_prob_changes(self, wt: SiteCode, z: Tensor, tokens: Tensor) -> Tensor:
        """``log p'(a) − log p(a)`` (B, S, A) at the intervened sites for token ids `tokens` (A,), for B
        interventions on the latents `z` (B, S, d_sae) (error at WT); exactly 0 for a no-op."""
        changed, base = self.passes.batched(
            self.delta(wt, z), lambda batch: self.log_probs(wt.positions, batch, wt.positions)[..., tokens])
        return changed - base

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

        return self.passes.halving(attempt, grad=True)
