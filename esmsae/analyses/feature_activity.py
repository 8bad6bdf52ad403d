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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae.analyses.arrays import Activity, sum_activity
from esmsae.config.settings import (
    ActivitySettings,
    Forward,
    Runtime,
    as_params,
)
from esmsae.inputs.fasta import Skipped, reference_sequences
from esmsae.inputs.mutations import AMINO_ACIDS, within_context
from esmsae.model.esm import (
    MAX_TOKENS,
    EsmLM,
    open_model,
)
from esmsae.model.sae import TopKSAE, open_sae
from esmsae.pipeline.columns import TABLES
from esmsae.pipeline.io import write_csv
from esmsae.pipeline.resume import WorkFolder, file_identity, fingerprint

log = logging.getLogger(__name__)


RESIDUE_INDEX = {aa: i for i, aa in enumerate(AMINO_ACIDS)}


# Positions encoded at once: a few thousand rows of d_sae latents, tens of MB at d_sae = 4096 (whole
# sequences: a chunk ends at a sequence's end, so that an example's window is in its chunk).
ENCODE_ROWS = 2048


@dataclass
class TopExamples:
    """Each feature's `n` highest activations over the reference positions seen so far (METHOD.md "Top-activating
    examples"), ties to the earlier record (its ordinal in the reference stream), then the earlier position.

    Memory is bounded by n × d_sae entries whatever the number of sequences: a chunk offers only the
    activations that beat a feature's n-th best so far, and only those kept get their window built.
    Arrays are (d_sae, n), rank order; empty slots have value −inf.
    """

    value: np.ndarray
    ordinal: np.ndarray
    position: np.ndarray
    record: np.ndarray      # object: record names
    window: np.ndarray      # object: the residues p − w .. p + w (clipped)
    start: np.ndarray       # the window's first residue position
    window_values: np.ndarray  # object: the feature's activation at each window residue, ';'-joined
    width: int              # w

    @classmethod
    def empty(cls, d_sae: int, n: int, width: int) -> TopExamples:
        return cls(value=np.full((d_sae, n), -np.inf), ordinal=np.zeros((d_sae, n), np.int64),
                   position=np.zeros((d_sae, n), np.int64), record=np.full((d_sae, n), "", dtype=object),
                   window=np.full((d_sae, n), "", dtype=object), start=np.zeros((d_sae, n), np.int64),
                   window_values=np.full((d_sae, n), "", dtype=object), width=width)

    @property
    def n(self) -> int:
        return self.value.shape[1]

    def merge(self, other: TopExamples) -> TopExamples:
        """The best n of both (`other`'s entries come later in the stream only through their ordinals)."""
        entries = {name: np.concatenate([getattr(self, name), getattr(other, name)], axis=1)
                   for name in ("value", "ordinal", "position", "record", "window", "start", "window_values")}
        return self._best(entries)

    def _best(self, entries: dict[str, np.ndarray]) -> TopExamples:
        """Per feature (row), the n best of its m entries: by value, then earlier ordinal, then earlier position."""
        d_sae, m = entries["value"].shape
        flat = {name: array.reshape(-1) for name, array in entries.items()}
        features = np.repeat(np.arange(d_sae), m)
        order = np.lexsort((flat["position"], flat["ordinal"], -flat["value"], features))
        keep = order.reshape(d_sae, m)[:, :self.n]
        return TopExamples(**{name: flat[name][keep] for name in flat}, width=self.width)

    def offer(self, z: torch.Tensor, batch: list[tuple[int, str, str]], rows: list[tuple[int, int]]) -> TopExamples:
        """The best n after a chunk of latents `z` (R, d_sae) of whole sequences: `batch` holds (ordinal, name,
        sequence) per sequence and `rows` each sequence of the chunk as (index in batch, first row in `z`)."""
        values = z.detach().double().cpu().numpy()
        d_sae = values.shape[1]
        bar = self.value[:, -1]  # the n-th best so far (−inf while not full): a later tie loses to it
        hits = np.argwhere((values > 0) & (values > bar[None, :]))
        if not len(hits):
            return self
        seq_of_row = np.empty(values.shape[0], dtype=np.int64)
        pos_of_row = np.empty(values.shape[0], dtype=np.int64)
        for index, first in rows:
            length = len(batch[index][2])
            seq_of_row[first:first + length] = index
            pos_of_row[first:first + length] = np.arange(1, length + 1)
        row, feature = hits[:, 0], hits[:, 1]
        value = values[row, feature]
        ordinal = np.array([batch[i][0] for i in seq_of_row[row]], dtype=np.int64)
        position = pos_of_row[row]
        order = np.lexsort((position, ordinal, -value, feature))  # a chunk's batch is not in stream order
        grouped = feature[order]
        rank = np.arange(len(order)) - np.searchsorted(grouped, grouped, side="left")
        offered = TopExamples.empty(d_sae, self.n, self.width)
        first_row = {index: first for index, first in rows}
        for c, r in zip(order[rank < self.n].tolist(), rank[rank < self.n].tolist(), strict=True):
            f, index, p = int(feature[c]), int(seq_of_row[row[c]]), int(position[c])
            _, name, seq = batch[index]
            lo, hi = max(1, p - self.width), min(len(seq), p + self.width)
            base = first_row[index]
            offered.value[f, r], offered.ordinal[f, r], offered.position[f, r] = value[c], ordinal[c], p
            offered.record[f, r], offered.window[f, r], offered.start[f, r] = name, seq[lo - 1:hi], lo
            offered.window_values[f, r] = ";".join(f"{v:.4g}" for v in values[base + lo - 1:base + hi, f])
        return self.merge(offered)

    def table(self, layer: int, k: int, activations: str) -> pd.DataFrame:
        """``features/L{layer}_examples.csv``: one row per feature and rank with an activation, with the SAE's
        `k` and d_sae and the forward (`activations`) it read."""
        feature, rank = np.nonzero(np.isfinite(self.value) & (self.value > 0))
        return pd.DataFrame({"layer": layer, "feature": feature, "rank": rank + 1, "record": self.record[feature, rank],
                             "position": self.position[feature, rank], "activation": self.value[feature, rank],
                             "window": self.window[feature, rank], "window_start": self.start[feature, rank],
                             "window_activations": self.window_values[feature, rank], "k": k,
                             "d_sae": self.value.shape[0], "activations": activations},
                            columns=TABLES["feature_examples"])


def feature_activity(lm: EsmLM, sae: TopKSAE, layer: int, sequences: Iterable[tuple[str, str]],
                     wt_names: Iterable[str], *, buffer: int = 256, max_tokens: int = 16384,
                     examples: TopExamples | None = None,
                     first_ordinal: int = 0) -> tuple[Activity, TopExamples | None]:
    """Count every feature's activity at every residue of `sequences` (name, sequence) at `layer`, and keep its
    top-activating examples (when `examples` is given: the best so far, updated and returned).

    Sequences are read `buffer` at a time, sorted by length and run in padded batches of at most
    `max_tokens` tokens; only counts are kept, plus the latents of the sequences named in
    `wt_names` (the configured WT sequences). Each sequence's ordinal in the stream (from
    `first_ordinal`) breaks ties between examples. Deterministic for a given order of sequences.
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

    def run(batch: list[tuple[int, str, str]]) -> None:
        nonlocal n_positions, examples
        with torch.no_grad():
            h = lm.hiddens(lm.tokenize_padded([s for _, _, s in batch]), [layer])[layer]
            rows = torch.cat([torch.full((len(s),), r, dtype=torch.long) for r, (_, _, s) in enumerate(batch)])
            tokens = torch.cat([torch.arange(1, len(s) + 1) for _, _, s in batch])
            residues = torch.tensor([RESIDUE_INDEX[c] for _, _, s in batch for c in s], device=device)
            x = h[rows.to(device), tokens.to(device)].to(sae.w_enc.dtype)
            del h
            latents = []
            firsts = np.cumsum([0] + [len(s) for _, _, s in batch])
            chunk_start, seq = 0, 0
            while seq < len(batch):  # whole sequences, at most ENCODE_ROWS rows (or one longer sequence)
                end = seq + 1
                while end < len(batch) and firsts[end + 1] - firsts[seq] <= ENCODE_ROWS:
                    end += 1
                part = slice(int(firsts[seq]), int(firsts[end]))
                chunk_start = int(firsts[seq])
                _, z, _, _ = sae.encode(x[part])
                if examples is not None:
                    examples = examples.offer(z, batch, [(i, int(firsts[i]) - chunk_start) for i in range(seq, end)])
                seq = end
                onehot = torch.nn.functional.one_hot(residues[part], 20).to(torch.float64)
                active = (z > 0).to(torch.float64)
                counts["residue_counts"] += onehot.sum(0)
                counts["n_active"] += active.sum(0)
                counts["active_by_residue"] += onehot.T @ active
                counts["activation_by_residue"] += onehot.T @ z.to(torch.float64)
                counts["max_activation"] = torch.maximum(counts["max_activation"], z.max(0).values.double())
                if any(name in wt_names for _, name, _ in batch):
                    latents.append(z.to(torch.float32).cpu())
        n_positions += len(residues)
        if latents:
            z_all, start = torch.cat(latents), 0
            for _, name, seq in batch:
                if name in wt_names:
                    wt_latents[name] = z_all[start:start + len(seq)].numpy()
                start += len(seq)

    def flush(pending: list[tuple[int, str, str]]) -> None:
        pending.sort(key=lambda item: len(item[2]))
        batch: list[tuple[int, str, str]] = []
        for item in pending:
            if batch and (len(batch) + 1) * (len(item[2]) + 2) > max_tokens:
                run(batch)
                batch = []
            batch.append(item)
        if batch:
            run(batch)

    pending: list[tuple[int, str, str]] = []
    for ordinal, (name, seq) in enumerate(sequences, start=first_ordinal):
        pending.append((ordinal, name, seq))
        n_sequences += 1
        if len(pending) == buffer:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    numbers = {name: value.cpu().numpy() for name, value in counts.items()}
    return Activity(
        layer=layer, k=sae.k, d_sae=d_sae, activations=lm.activations, n_sequences=n_sequences,
        n_positions=n_positions,
        residue_counts=numbers["residue_counts"].astype(np.int64), n_active=numbers["n_active"].astype(np.int64),
        active_by_residue=numbers["active_by_residue"].T.astype(np.int64),
        activation_by_residue=numbers["activation_by_residue"].T.copy(),
        max_activation=numbers["max_activation"], wt_latents=wt_latents,
    ), examples


# -- feature labels (METHOD.md "Feature characterization") -------------------------------------
ACTIVITY_CHUNK = 1000  # reference sequences per resume piece of the activity pass


def characterize_features(settings: ActivitySettings, wt_seqs: dict[str, str], layer: int, k: int, forward: Forward,
                          runtime: Runtime, checkpoint: str | Path, sae: str | Path, reference: str | Path | None,
                          out: str | Path, examples_out: str | Path) -> None:
    """Rule characterize_features: every feature's activity over the reference positions at one layer, and its
    ``n_examples`` top-activating positions (``features/L{layer}_examples.csv``).

    The reference (WT sequences, then the FASTA) streams in chunks of ``ACTIVITY_CHUNK`` sequences;
    each chunk's counts and best examples are a resume piece, and the result is their sum and their best.
    """
    lm = open_model(checkpoint, forward, runtime)
    opened = open_sae(sae, k, lm, layer)
    skipped = Skipped()
    wt_seqs = within_context(wt_seqs, f"feature activity at layer {layer}")
    stream = reference_sequences(wt_seqs, reference, settings.max_sequences, MAX_TOKENS - 2, skipped)
    inputs = {"checkpoint": checkpoint, "sae": sae} | ({"reference": reference} if reference else {})
    work = WorkFolder(out, fingerprint(rule="characterize_features", settings=as_params(settings), wt=wt_seqs,
                                       layer=layer, k=k, forward=as_params(forward),
                                       inputs={n: file_identity(p) for n, p in sorted(inputs.items())}),
                      keep=runtime.keep_pieces)
    total, index, done = None, 0, 0
    best = TopExamples.empty(opened.info.d_sae, settings.n_examples, settings.example_window)
    while True:
        chunk = list(itertools.islice(stream, ACTIVITY_CHUNK))
        if not chunk:
            break
        name = f"{chunk[0][0]}..{chunk[-1][0]}"
        piece = work.load(index, name)
        if piece is None:
            fresh = TopExamples.empty(opened.info.d_sae, settings.n_examples, settings.example_window)
            piece = feature_activity(lm, opened, layer, chunk, wt_seqs, examples=fresh,
                                     first_ordinal=index * ACTIVITY_CHUNK)
            work.save(index, name, piece)
        else:
            done += 1
        activity, examples = piece
        best = best.merge(examples)  # counts and n examples per feature: memory stays flat
        total = activity if total is None else sum_activity([total, activity])
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
    write_csv(best.table(layer, total.k, total.activations), examples_out)
    work.finish()
