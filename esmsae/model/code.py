"""The SAE's reading of the residual stream at the intervened sites: latents and error together.

METHOD.md "Splice and intervention". At a WT site the SAE encodes the vector with its own
statistics ``μ, σ``; a mutant's vector at the same site is encoded with its own statistics too,
but its error is measured against the WT statistics,
``ẽ_mut = h_mut − dec(z_mut; μ_wt, σ_wt)``, so that splicing ``(z_mut, ẽ_mut)`` into the WT run
gives the mutant's vector there exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from esmsae.model.sae import TopKSAE


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


def read_code(sae: TopKSAE, positions: Tensor, x: Tensor) -> SiteCode:
    """The code of vectors `x` (S, d) at token `positions`, each with its own statistics."""
    pre, z, mu, sigma = sae.encode(x)
    return SiteCode(positions, pre, z, x - sae.decode(z, mu, sigma), mu, sigma)


def mutant_code(sae: TopKSAE, h_sites: Tensor, wt: SiteCode) -> SiteCode:
    """A mutant's latents at the sites, with its error measured against the WT statistics.

    ``z_mut`` comes from the mutant's own encode; ``ẽ_mut = h_mut − dec(z_mut; μ_wt, σ_wt)``,
    so splicing ``(z_mut, ẽ_mut)`` into the WT run gives the mutant's vector there.
    `h_sites` is (..., S, d).
    """
    pre, z, _, _ = sae.encode(h_sites)
    error = h_sites - sae.decode(z, wt.mu, wt.sigma)
    return SiteCode(wt.positions, pre, z, error, wt.mu, wt.sigma)
