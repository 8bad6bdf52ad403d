"""Rule measure_sae_quality: how well each layer's SAE reconstructs the residual stream.

Measured over residue positions (BOS and EOS excluded) of the WT and selected
mutant sequences, in the model's own coordinates:

* ``fve``: fraction of variance explained, ``1 − Σ‖x − dec(z)‖² / Σ‖x − x̄‖²``;
* ``mean_l0``: mean number of active latents per position (≤ k);
* ``dead_fraction``: fraction of latents active at no position.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from esmsae.analyses.scoring import selected_mutants
from esmsae.config.settings import (
    Runtime,
)
from esmsae.model.activations import residue_activations
from esmsae.model.esm import (
    EsmLM,
    open_model,
)
from esmsae.model.sae import TopKSAE, open_sae
from esmsae.pipeline.columns import QUALITY_COLUMNS
from esmsae.pipeline.io import write_csv


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


log = logging.getLogger("esmsae")


def measure_sae_quality(wt_seqs: dict[str, str], saes: dict[int, str | Path], k: dict[int, int], precision: str,
                        runtime: Runtime, checkpoint: str | Path, scores: dict[str, str | Path],
                        out: str | Path) -> None:
    """Rule measure_sae_quality: FVE, L0 and dead latents per layer on WT and selected mutant sequences."""
    lm = open_model(checkpoint, precision, runtime)
    seqs = []
    for protein, wt in wt_seqs.items():
        seqs += [wt] + [m.apply(wt) for m in selected_mutants(wt, scores[protein])]
    opened = {layer: open_sae(path, k[layer], lm, layer) for layer, path in sorted(saes.items())}
    table = sae_quality(lm, opened, seqs)
    log.info("SAE quality on %d sequences:\n%s", len(seqs), table.to_string(index=False))
    write_csv(table, out)
