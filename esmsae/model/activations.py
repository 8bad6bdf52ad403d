"""The model's residual vectors at the residue positions of many sequences (SAE training and quality)."""

from __future__ import annotations

from collections import defaultdict

import torch

from esmsae.model.esm import EsmLM


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
