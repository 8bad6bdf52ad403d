"""Measuring what features do: their activity over reference sequences, and their output effect.

METHOD.md "Feature characterization". :func:`feature_activity` streams reference sequences
through the model up to layer ℓ in padded batches and keeps only counts (:class:`~esmsae.labels.
Activity`), so memory is bounded by one batch whatever the number of sequences.
:func:`output_effects` measures, through the engine, what removing a feature at the WT positions
where it is active does to the log-probabilities of the 20 amino acids there: one engine row per
(feature, position), batched per position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from esmsae.engine import Splice
from esmsae.esm import EsmLM
from esmsae.labels import Activity
from esmsae.mutations import AMINO_ACIDS
from esmsae.sae import TopKSAE

log = logging.getLogger(__name__)

RESIDUE_INDEX = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
# Positions encoded at once: a few thousand rows of d_sae latents, tens of MB at d_sae = 4096.
ENCODE_ROWS = 2048


def feature_activity(lm: EsmLM, sae: TopKSAE, layer: int, sequences: Iterable[tuple[str, str]],
                     wt_names: Iterable[str], *, buffer: int = 256, max_tokens: int = 16384) -> Activity:
    """Count every feature's activity at every residue of `sequences` (name, sequence) at `layer`.

    Sequences are read `buffer` at a time, sorted by length and run in padded batches of at most
    `max_tokens` tokens; only counts are kept, plus the latents of the sequences named in
    `wt_names` (the configured WT sequences). Deterministic for a given order of sequences.
    """
    wt_names = set(wt_names)
    d_sae = sae.info.d_sae
    device = lm.device
    counts = {
        "residue_counts": torch.zeros(20, dtype=torch.float64, device=device),
        "n_active": torch.zeros(d_sae, dtype=torch.float64, device=device),
        "active_by_residue": torch.zeros(20, d_sae, dtype=torch.float64, device=device),
        "activation_by_residue": torch.zeros(20, d_sae, dtype=torch.float64, device=device),
        "max_activation": torch.zeros(d_sae, dtype=torch.float64, device=device),
    }
    wt_latents: dict[str, np.ndarray] = {}
    n_sequences = n_positions = 0

    def run(batch: list[tuple[str, str]]) -> None:
        nonlocal n_positions
        with torch.no_grad():
            h = lm.hiddens(lm.tokenize_padded([s for _, s in batch]), [layer])[layer]
            rows = torch.cat([torch.full((len(s),), r, dtype=torch.long) for r, (_, s) in enumerate(batch)])
            tokens = torch.cat([torch.arange(1, len(s) + 1) for _, s in batch])
            residues = torch.tensor([RESIDUE_INDEX[c] for _, s in batch for c in s], device=device)
            x = h[rows.to(device), tokens.to(device)].to(sae.w_enc.dtype)
            del h
            latents = []
            for start in range(0, len(residues), ENCODE_ROWS):  # bounded memory whatever d_sae is
                part = slice(start, start + ENCODE_ROWS)
                _, z, _, _ = sae.encode(x[part])
                onehot = torch.nn.functional.one_hot(residues[part], 20).to(torch.float64)
                active = (z > 0).to(torch.float64)
                counts["residue_counts"] += onehot.sum(0)
                counts["n_active"] += active.sum(0)
                counts["active_by_residue"] += onehot.T @ active
                counts["activation_by_residue"] += onehot.T @ z.to(torch.float64)
                counts["max_activation"] = torch.maximum(counts["max_activation"], z.max(0).values.double())
                if any(name in wt_names for name, _ in batch):
                    latents.append(z.to(torch.float32).cpu())
        n_positions += len(residues)
        if latents:
            z_all, start = torch.cat(latents), 0
            for name, seq in batch:
                if name in wt_names:
                    wt_latents[name] = z_all[start:start + len(seq)].numpy()
                start += len(seq)

    def flush(pending: list[tuple[str, str]]) -> None:
        pending.sort(key=lambda item: len(item[1]))
        batch: list[tuple[str, str]] = []
        for item in pending:
            if batch and (len(batch) + 1) * (len(item[1]) + 2) > max_tokens:
                run(batch)
                batch = []
            batch.append(item)
        if batch:
            run(batch)

    pending: list[tuple[str, str]] = []
    for item in sequences:
        pending.append(item)
        n_sequences += 1
        if len(pending) == buffer:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    numbers = {name: value.cpu().numpy() for name, value in counts.items()}
    return Activity(
        layer=layer, k=sae.k, d_sae=d_sae, n_sequences=n_sequences, n_positions=n_positions,
        residue_counts=numbers["residue_counts"].astype(np.int64), n_active=numbers["n_active"].astype(np.int64),
        active_by_residue=numbers["active_by_residue"].T.astype(np.int64),
        activation_by_residue=numbers["activation_by_residue"].T.copy(),
        max_activation=numbers["max_activation"], wt_latents=wt_latents,
    )


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
