"""Rule measure_output_effects: what removing a feature does to the model's output where it is active.

METHOD.md "Feature characterization". :func:`output_effects` measures, through the engine, the
change in log-probability of the 20 amino acids when a feature is set to 0 at the WT positions
where it is most active: one engine row per (feature, position), batched per position.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from esmsae.config.settings import (
    Forward,
    Runtime,
    as_params,
)
from esmsae.inputs.mutations import AMINO_ACIDS, within_context
from esmsae.model.esm import (
    open_model,
)
from esmsae.model.sae import open_sae
from esmsae.model.splice import Splice
from esmsae.pipeline.columns import TABLES, read_table
from esmsae.pipeline.io import write_csv
from esmsae.pipeline.resume import WorkFolder, file_identity, fingerprint, run_items

log = logging.getLogger(__name__)


def effect_positions(z: Tensor, feature: int, max_positions: int) -> list[int]:
    """Token positions (residue i is token i) where `feature` is active in WT latents `z` (L, d_sae):
    the `max_positions` highest activations, ties to the earlier position."""
    values = z[:, feature]
    active = torch.nonzero(values > 0).flatten().tolist()
    active.sort(key=lambda p: (-float(values[p]), p))
    return sorted(p + 1 for p in active[:max_positions])


def output_effects(splice: Splice, features: list[int], max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """``Σ_positions Δ_a`` (F, 20) and the number of positions (F,) for each feature on one WT sequence.

    ``Δ_a = log p(a) − log p'(a)`` at position i, where ``p'`` has ``z'_j = 0`` there (all else at
    WT, error included): positive when the feature promotes ``a``. One engine row per (feature,
    position), all the features active at a position in one batch.
    """
    length = len(splice.wt_seq)
    code = splice.wt_code(torch.arange(1, length + 1))
    tokens = torch.tensor([splice.lm.token_index(a) for a in AMINO_ACIDS], device=splice.lm.device)
    by_position: dict[int, list[int]] = {}
    for row, feature in enumerate(features):
        for position in effect_positions(code.z, feature, max_positions):
            by_position.setdefault(position, []).append(row)
    total = np.zeros((len(features), 20))
    count = np.zeros(len(features), dtype=np.int64)
    for position, rows in sorted(by_position.items()):
        site = splice.wt_code([position])
        chosen = torch.tensor([features[r] for r in rows], device=site.z.device)
        z = site.z.expand(len(rows), -1, -1).clone()
        z[torch.arange(len(rows)), 0, chosen] = 0.0
        delta = -splice.log_prob_changes(site, z, tokens)[:, 0]  # (rows, 20): log p − log p'
        total[rows] += delta.double().cpu().numpy()
        count[rows] += 1
    return total, count


def measure_output_effects(max_positions: int, wt_seqs: dict[str, str], layer: int, k: int, forward: Forward,
                           runtime: Runtime, checkpoint: str | Path, sae: str | Path, shown: str | Path,
                           out: str | Path) -> None:
    """Rule measure_output_effects: each shown feature's output effect at one layer, mean over positions.

    One resume piece per protein; rows are (feature, position), batched per position by the engine.
    """
    lm = open_model(checkpoint, forward, runtime)
    opened = open_sae(sae, k, lm, layer)
    table = read_table(shown, "shown_features")
    features = sorted(table.loc[table["layer"] == layer, "feature"].astype(int).tolist())
    wt_seqs = within_context(wt_seqs, f"output effects at layer {layer}")
    work = WorkFolder(out, fingerprint(rule="measure_output_effects", max_positions=max_positions, wt=wt_seqs,
                                       layer=layer, k=k, forward=as_params(forward), features=features,
                                       inputs={"checkpoint": file_identity(checkpoint), "sae": file_identity(sae)}),
                      keep=runtime.keep_pieces)
    proteins = list(wt_seqs)

    def one(index: int):
        splice = Splice(lm, opened, wt_seqs[proteins[index]], layer, runtime.batch_size, protein=proteins[index])
        return output_effects(splice, features, max_positions)

    parts = run_items(proteins, one, work, desc=f"output effects L{layer}") if features else []
    total = sum(p[0] for p in parts) if parts else np.zeros((0, 20))
    count = sum(p[1] for p in parts) if parts else np.zeros(0, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count[:, None]
    rows = pd.DataFrame(mean, columns=list(AMINO_ACIDS))
    rows.insert(0, "n_positions", count)
    rows.insert(0, "feature", features)
    rows.insert(0, "layer", layer)
    rows["k"], rows["d_sae"], rows["activations"] = k, opened.info.d_sae, lm.activations
    log.info("layer %d: output effects of %d features from %d engine rows", layer, len(features), int(count.sum()))
    write_csv(rows[rows["n_positions"] > 0].reindex(columns=TABLES["output_effects"]), out)
    work.finish()
