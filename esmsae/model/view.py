"""One mutant at the splice's layer, as every analysis sees it: the one-analysis API's input.

Built once per mutant by :meth:`esmsae.model.splice.Splice.view`: its sites, the WT and mutant
codes there, the values in the intervention space, the score. An analysis asks it for the
effects of a batch of interventions (:meth:`MutantView.effects`) or for a differentiable score
(:meth:`MutantView.differentiate`), and never sees a batch size or a device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from torch import Tensor

from esmsae.inputs.mutations import Mutant
from esmsae.model.code import SiteCode

if TYPE_CHECKING:
    from esmsae.model.splice import Effects, ScoreSpec, Splice

T = TypeVar("T")
ScoreFn = Callable[..., Tensor]


class OnSplice:
    """What a view says of the splice it is taken on (its ``engine``): the protein and the layer."""

    engine: Splice

    @property
    def protein(self) -> str:
        return self.engine.protein

    @property
    def layer(self) -> int:
        return self.engine.layer


@dataclass(frozen=True)
class MutantView(OnSplice):
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


@dataclass(frozen=True)
class WTView(OnSplice):
    """The WT sequence at the splice's layer, as an analysis of the whole protein sees one unit of its work.

    ``code`` is the SAE's reading at every residue (token positions 1..L); interventions are latent
    vectors there (B, L, d_sae), the error held at WT.
    """

    engine: Splice = field(repr=False)
    unit: str

    @property
    def code(self) -> SiteCode:
        return self.engine.residue_code()

    def log_probs(self, z: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities of token ids `tokens` (A,) at every residue, (B, L, A), for B interventions on the
        latents `z` (B, L, d_sae), and of the unmodified run beside each (the engine's batching policy)."""
        return self.engine.residue_log_probs(z, tokens)
