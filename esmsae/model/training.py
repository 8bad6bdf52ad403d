"""Rule train_sae: fitting a TopK SAE (Adams et al. layout) to one layer's activations.

The loss is the reconstruction error in the normalized space the SAE decodes into
(METHOD.md "SAE"); decoder rows are kept at unit norm. Deterministic on CPU for a seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from esmsae.config.settings import (
    Forward,
    Runtime,
    TrainSettings,
)
from esmsae.inputs.mutations import AMINO_ACIDS, Mutant, Site
from esmsae.model.activations import residue_activations
from esmsae.model.esm import (
    open_model,
)
from esmsae.model.sae import EPS, REQUIRED_KEYS, TopKSAE, random_sae, save_sae

log = logging.getLogger(__name__)


def train_sae(x: Tensor, *, d_sae: int, k: int, steps: int, lr: float = 1e-3, batch_size: int = 1024,
              seed: int = 0, layer: int | None = None) -> TopKSAE:
    """Fit a TopK SAE to activations `x` (n, d) by reconstructing the normalized vectors.

    The loss is ``‖x̂ − (z w_dec + b_pre)‖²`` in the normalized space the SAE
    decodes into; decoder rows are kept at unit norm. Deterministic on CPU for a seed.
    """
    x = x.detach().float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    init = random_sae(x.shape[1], d_sae, k, seed=seed, layer=layer)
    mu, sigma = TopKSAE.stats(x)
    x_hat = (x - mu) / (sigma + EPS)
    params = {name: p.detach().clone().to(x.device).requires_grad_(True)
              for name, p in (("w_enc", init.w_enc), ("w_dec", init.w_dec), ("b_enc", init.b_enc))}
    params["b_pre"] = x_hat.mean(0).clone().requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=lr)
    for step in range(steps):
        idx = torch.randint(0, x_hat.shape[0], (min(batch_size, x_hat.shape[0]),), generator=gen)
        batch = x_hat[idx.to(x.device)]
        pre = (batch - params["b_pre"]) @ params["w_enc"] + params["b_enc"]
        top = torch.topk(pre, k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        recon = z @ params["w_dec"] + params["b_pre"]
        loss = (recon - batch).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["w_dec"] /= params["w_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log.info("train_sae layer %s step %d/%d loss %.4f", layer, step + 1, steps, loss.item())
    return TopKSAE(*(params[name].detach().cpu() for name in REQUIRED_KEYS), k=k, layer=layer)


def training_sequences(wt_seqs: list[str], n_mutants: int, seed: int) -> list[str]:
    """WT sequences plus `n_mutants` random single mutants of each, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    seqs = []
    for wt in wt_seqs:
        seqs.append(wt)
        for _ in range(n_mutants):
            pos = int(rng.integers(1, len(wt) + 1))
            mut = str(rng.choice([a for a in AMINO_ACIDS if a != wt[pos - 1]]))
            seqs.append(Mutant(f"{wt[pos - 1]}{pos}{mut}", (Site(wt[pos - 1], pos, mut),)).apply(wt))
    return seqs


def train_layer_sae(train: TrainSettings, wt_seqs: list[str], layer: int, k: int, forward: Forward,
                    runtime: Runtime, checkpoint: str | Path, out: str | Path) -> None:
    """Rule train_sae: fit a TopK SAE to layer `layer`'s residual stream (the study's forward) on its sequences."""
    lm = open_model(checkpoint, forward, runtime)
    lm.check_layer(layer, where=f"sae.train: layer {layer}")
    seqs = training_sequences(wt_seqs, train.n_mutants, train.seed)
    x = residue_activations(lm, seqs, [layer])[layer]
    log.info("layer %d: %d activation vectors from %d sequences", layer, x.shape[0], len(seqs))
    sae = train_sae(x.to(lm.device), d_sae=train.d_sae, k=k, steps=train.steps, lr=train.lr,
                    batch_size=train.batch_size, seed=train.seed, layer=layer)
    save_sae(sae, out)
