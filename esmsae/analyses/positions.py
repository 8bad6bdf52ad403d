"""Spread over positions: how much of a mutant's effect at layer ℓ sits at the mutated site.

METHOD.md "Spread over positions". At layer ℓ ≥ 1 the mutant's residual stream differs from the
WT's at every position, not only the site. For each token position p (BOS and EOS included),
``P_p = S(h with position p set to h_ℓ(t_mut)_p) − S(m)`` — the raw residual, no SAE — and
``P_all`` sets every position, which makes the run the mutant sequence's own from layer ℓ on:
``P_all`` is the mutant's own ``log p(b) − log p(a)`` at the site(s) minus ``S(m)``. The site
share is ``Σ_sites P_site / P_all``. One engine row per position (and one for ``P_all``), in
batches the engine sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae.analyses.api import Analysis, LayerMeta
from esmsae.config.settings import PositionSettings
from esmsae.model.view import MutantView
from esmsae.pipeline.columns import TABLES
from esmsae.pipeline.io import write_csv

# Positions per engine call: each row carries the whole (T, d) change, so a long protein is cut up.
ROWS_PER_CALL = 64


@dataclass(frozen=True)
class Spread:
    """One mutant's effect of its layer-ℓ representation, position by position."""

    mutant: str
    effects: np.ndarray   # (T,) P_p for token positions 0..T−1 (0 is BOS, T−1 is EOS)
    all_effect: float     # P_all
    site_effect: float    # Σ_sites P_site
    negligible: bool      # |P_all| < min_effect
    offset: int = 0       # token 0 of `effects` is this token of the whole sequence (a long one's window)

    @property
    def site_share(self) -> float:
        return float("nan") if self.negligible or self.all_effect == 0 else self.site_effect / self.all_effect


def spread(view: MutantView, settings: PositionSettings, context: None = None) -> Spread:
    """``P_p`` for every token position and ``P_all`` for one mutant (needs its full residual stream)."""
    if view.hidden is None:
        raise ValueError("position spread needs the mutant's residual stream at every token")
    engine = view.engine
    change = view.hidden - engine.h[0]  # (T, d)
    tokens = change.shape[0]
    positions = torch.arange(tokens, device=change.device)
    effects = []
    for start in range(0, tokens, ROWS_PER_CALL):
        rows = torch.arange(start, min(tokens, start + ROWS_PER_CALL), device=change.device)
        deltas = change.new_zeros(len(rows), tokens, change.shape[1])
        deltas[torch.arange(len(rows)), rows] = change[rows]
        effects.append(engine.residual_effects(positions, deltas, view.spec).effects)
    everything = engine.residual_effects(positions, change.unsqueeze(0), view.spec).effects
    per_position = torch.cat(effects).double().cpu().numpy()
    sites = [engine.token(s.pos) for s in view.mutant.sites]
    all_effect = float(everything[0])
    return Spread(mutant=view.mutant.name, effects=per_position, all_effect=all_effect,
                  site_effect=float(per_position[sites].sum()), negligible=abs(all_effect) < settings.min_effect,
                  offset=engine.offset)


def summary(s: Spread) -> str:
    return (f"P_all {s.all_effect:.4g}, at the site(s) {s.site_effect:.4g} "
            f"({'negligible' if s.negligible else f'share {s.site_share:.3g}'})")


def spread_tables(results: list[Spread], wt_seq: str, layer: int,
                  activations: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-position table (one row per mutant and token, in the whole sequence's numbering) and the
    per-mutant summary, each with the layer and the forward (`activations`) it was measured on."""
    residues = ["<cls>", *wt_seq, "<eos>"]
    rows = pd.DataFrame({
        "mutant": np.repeat([s.mutant for s in results], [len(s.effects) for s in results]),
        "position": np.concatenate([np.arange(len(s.effects)) + s.offset for s in results]) if results else [],
        "residue": [residues[p + s.offset] for s in results for p in range(len(s.effects))],
        "effect": np.concatenate([s.effects for s in results]) if results else [],
        "layer": layer, "activations": activations,
    }, columns=TABLES["positions"])
    summary_rows = pd.DataFrame({
        "mutant": [s.mutant for s in results], "site_effect": [s.site_effect for s in results],
        "all_effect": [s.all_effect for s in results], "negligible": [s.negligible for s in results],
        "site_share": [s.site_share for s in results], "layer": layer, "activations": activations,
    }, columns=TABLES["positions_summary"])
    return rows, summary_rows


def write_spread(results: list[Spread], outputs: Mapping[str, Path], settings: PositionSettings,
                 meta: LayerMeta) -> None:
    """Rule patch_positions's outputs: every position's effect, and each mutant's site share."""
    rows, summary_rows = spread_tables(results, meta.wt_seq, meta.layer, meta.activations)
    write_csv(rows, outputs["effects"])
    write_csv(summary_rows, outputs["summary"])


POSITIONS = Analysis(rule="patch_positions", settings=PositionSettings, run=spread, write=write_spread,
                     summary=summary)
