"""Rule characterize_features: what every feature does over the reference positions at one layer.

METHOD.md "Feature characterization". :func:`feature_activity` streams reference sequences
through the model up to layer ℓ in padded batches and keeps only counts
(:class:`~esmsae.analyses.arrays.Activity`), so memory is bounded by one batch whatever the
number of sequences; :func:`characterize_features` runs it over the WT sequences and the
reference FASTA in resumable chunks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from esmsae.analyses.arrays import Activity, sum_activity
from esmsae.config.settings import (
    FeatureSettings,
    Forward,
    Runtime,
    as_params,
)
from esmsae.inputs.fasta import Skipped, reference_sequences
from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.model.esm import (
    MAX_TOKENS,
    EsmLM,
    open_model,
)
from esmsae.model.sae import TopKSAE, open_sae
from esmsae.pipeline.resume import WorkFolder, file_identity, fingerprint

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


# -- feature labels (METHOD.md "Feature characterization") -------------------------------------
ACTIVITY_CHUNK = 1000  # reference sequences per resume piece of the activity pass


def characterize_features(settings: FeatureSettings, wt_seqs: dict[str, str], layer: int, k: int, forward: Forward,
                          runtime: Runtime, checkpoint: str | Path, sae: str | Path, reference: str | Path | None,
                          out: str | Path) -> None:
    """Rule characterize_features: every feature's activity over the reference positions at one layer.

    The reference (WT sequences, then the FASTA) streams in chunks of ``ACTIVITY_CHUNK`` sequences;
    each chunk's counts are a resume piece, and the result is their sum.
    """
    lm = open_model(checkpoint, forward, runtime)
    opened = open_sae(sae, k, lm, layer)
    skipped = Skipped()
    stream = reference_sequences(wt_seqs, reference, settings.max_sequences, MAX_TOKENS - 2, skipped)
    inputs = {"checkpoint": checkpoint, "sae": sae} | ({"reference": reference} if reference else {})
    work = WorkFolder(out, fingerprint(rule="characterize_features", settings=as_params(settings), wt=wt_seqs,
                                       layer=layer, k=k, forward=as_params(forward),
                                       inputs={n: file_identity(p) for n, p in sorted(inputs.items())}))
    total, index, done = None, 0, 0
    while True:
        chunk = list(itertools.islice(stream, ACTIVITY_CHUNK))
        if not chunk:
            break
        name = f"{chunk[0][0]}..{chunk[-1][0]}"
        piece = work.load(index, name)
        if piece is None:
            piece = feature_activity(lm, opened, layer, chunk, wt_seqs)
            work.save(index, name, piece)
        else:
            done += 1
        total = piece if total is None else sum_activity([total, piece])  # counts only: memory stays flat
        log.info("layer %d: %d sequences, %d positions so far", layer, total.n_sequences, total.n_positions)
        index += 1
    log.info("resume: %d of %d chunks already done in %s", done, index, work.dir)
    if skipped.total() or skipped.reached_max:
        log.warning("reference %s: skipped %d longer than the model's context and %d with residues outside the "
                    "20 (first: %s)%s", reference, skipped.too_long, skipped.other_residues,
                    ", ".join(skipped.names) or "-",
                    f"; stopped after {settings.max_sequences} sequences" if skipped.reached_max else "")
    log.info("layer %d: %d sequences, %d positions; %d of %d features never active", layer, total.n_sequences,
             total.n_positions, int((total.n_active == 0).sum()), total.d_sae)
    total.write(out)
    work.finish()
