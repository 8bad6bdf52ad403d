"""A planted feature: an SAE whose one feature is a linear detector of one residue (a helper, not a test)."""

from __future__ import annotations

import torch

from esmsae.model.sae import TopKSAE


def planted_detector(lm, layer: int, residue: str, seqs: list[str], feature: int = 3, d_sae: int = 16,
                     k: int = 4) -> TopKSAE:
    """An SAE whose feature `feature` fires at exactly the positions of `seqs` holding `residue` at `layer`
    (least squares on the normalized vectors, threshold half-way between the classes); every other feature's
    pre-activation is −1, so only the detector can be positive."""
    xs, residues = [], []
    with torch.no_grad():
        for seq in seqs:
            xs.append(lm.hidden(lm.tokenize([seq]), layer)[0, 1:-1])
            residues += list(seq)
    x = torch.cat(xs)
    x_hat = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)
    y = torch.tensor([1.0 if r == residue else -1.0 for r in residues])
    design = torch.cat([x_hat, torch.ones(len(x_hat), 1)], 1)
    w = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    score = design @ w
    lowest, highest = float(score[y > 0].min()), float(score[y < 0].max())
    assert lowest > highest + 0.2  # separable with a margin
    w_enc = torch.zeros(lm.embed_dim, d_sae)
    w_enc[:, feature] = w[:-1]
    b_enc = torch.full((d_sae,), -1.0)
    b_enc[feature] = float(w[-1]) - (lowest + highest) / 2
    w_dec = torch.randn(d_sae, lm.embed_dim, generator=torch.Generator().manual_seed(0))
    return TopKSAE(w_enc, w_dec / w_dec.norm(dim=1, keepdim=True), b_enc, torch.zeros(lm.embed_dim), k=k)
