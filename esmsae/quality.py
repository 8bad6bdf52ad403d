"""How well each layer's SAE reconstructs the residual stream on the study's own sequences.

Measured over residue positions (BOS and EOS excluded) of the WT and selected
mutant sequences, in the model's own coordinates:

* ``fve``: fraction of variance explained, ``1 − Σ‖x − dec(z)‖² / Σ‖x − x̄‖²``;
* ``mean_l0``: mean number of active latents per position (≤ k);
* ``dead_fraction``: fraction of latents active at no position.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import torch

from esmsae.columns import QUALITY_COLUMNS
from esmsae.esm import EsmLM
from esmsae.sae import TopKSAE


def residue_activations(lm: EsmLM, seqs: list[str], layers: list[int], batch_size: int = 32) -> dict[int, torch.Tensor]:
    """``h_ℓ`` at residue positions of every sequence, stacked: {layer: (n_positions, d)}."""
    by_length: dict[int, list[str]] = defaultdict(list)
    for s in seqs:
        by_length[len(s)].append(s)
    chunks: dict[int, list[torch.Tensor]] = defaultdict(list)
    with torch.no_grad():
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), batch_size):
                tokens = lm.tokenize(group[start:start + batch_size])
                for layer, h in lm.hiddens(tokens, layers).items():
                    chunks[layer].append(h[:, 1:-1].reshape(-1, h.shape[-1]).float().cpu())
    return {layer: torch.cat(chunks[layer]) for layer in layers}


def sae_quality(lm: EsmLM, saes: dict[int, TopKSAE], seqs: list[str]) -> pd.DataFrame:
    """One row per layer: reconstruction quality of its SAE on `seqs`."""
    acts = residue_activations(lm, seqs, sorted(saes))
    rows = []
    with torch.no_grad():
        for layer in sorted(saes):
            sae, x = saes[layer].cpu(), acts[layer]
            _, z, mu, sigma = sae.encode(x)
            recon = sae.decode(z, mu, sigma)
            residual = (x - recon).pow(2).sum()
            total = (x - x.mean(0, keepdim=True)).pow(2).sum()
            active = z > 0
            rows.append({
                "layer": layer,
                "d_sae": sae.info.d_sae,
                "k": sae.k,
                "fve": float(1 - residual / total),
                "mean_l0": float(active.sum(-1).float().mean()),
                "dead_fraction": float((~active.any(0)).float().mean()),
                "n_positions": int(x.shape[0]),
            })
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)
