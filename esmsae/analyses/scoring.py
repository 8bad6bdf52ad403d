"""Rule score_mutations: WT-marginal mutation scores and the mutation selection.

METHOD.md "Score": ``S(m) = Σ_sites log softmax(logits_i)[b] − log softmax(logits_i)[a]``
with logits from one unmodified forward of the WT sequence.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from esmsae.config.settings import ACTIVATIONS, Forward, Protein, Runtime, SelectionSettings
from esmsae.inputs.mutations import (
    MODEL_WINDOW,
    Mutant,
    all_single_mutants,
    mutant_window,
    parse_mutant,
    read_assay,
    select_from_assay,
    select_lowest,
)
from esmsae.model.esm import MAX_TOKENS, EsmLM, open_model
from esmsae.pipeline.columns import SCORE_COLUMNS, read_table
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import write_csv

log = logging.getLogger(__name__)


def wt_log_probs(lm: EsmLM, wt_seq: str) -> torch.Tensor:
    """Log-probabilities (T, V) from the model's own forward on the unmasked WT sequence."""
    with torch.no_grad():
        return torch.log_softmax(lm.logits(lm.tokenize([wt_seq]))[0].float(), dim=-1)


def wt_marginal(lm: EsmLM, logp: torch.Tensor, mutants: list[Mutant], offset: int = 0) -> np.ndarray:
    """``S(m)`` for each mutant from WT log-probabilities (residue i is token i − `offset`: a window's)."""
    out = np.empty(len(mutants), dtype=np.float64)
    idx = lm.token_index
    for row, mutant in enumerate(mutants):
        out[row] = sum(float(logp[s.pos - offset, idx(s.mut)] - logp[s.pos - offset, idx(s.wt)])
                       for s in mutant.sites)
    return out


def windowed_scores(lm: EsmLM, wt_seq: str, mutants: list[Mutant],
                    windows: list[tuple[int, int]]) -> np.ndarray:
    """``S(m)`` of each mutant on its own window's WT forward (METHOD.md "Long sequences"): one forward per
    distinct window, shared by the mutants in it."""
    out = np.empty(len(mutants), dtype=np.float64)
    for window in dict.fromkeys(windows):
        rows = [i for i, w in enumerate(windows) if w == window]
        with torch.no_grad():
            logp = torch.log_softmax(lm.logits(lm.window_tokens([wt_seq], window))[0].float(), dim=-1)
        out[rows] = wt_marginal(lm, logp, [mutants[i] for i in rows], offset=window[0])
    return out


def scores_table(lm: EsmLM, protein: str, wt_seq: str, dms: str | Path | None,
                 settings: SelectionSettings) -> pd.DataFrame:
    """One row per scored mutant with its WT-marginal score, DMS score and selection flag.

    ``wt_marginal`` is the score on `lm`'s forward (the study's, recorded in ``activations``);
    ``wt_marginal_interprot`` and ``wt_marginal_fair_esm`` give it on each forward, so that the
    DMS correlation can be read under both. ``source: dms`` scores every substitution in the
    assay (singles; multi-site too when ``multi``) and selects per METHOD.md; ``source: model``
    scores all 19·L singles and selects the n lowest, attaching DMS scores where an assay is given.
    """
    assay = read_assay(dms, wt_seq, multi=settings.multi) if dms else None
    if settings.source == "dms":
        if assay is None:
            raise InputError(f"proteins.{protein}.dms: mutations.source is 'dms' but no assay file is given")
        mutants = list(assay["parsed"])
        dms_score = assay["dms_score"].to_numpy(dtype=float)
        selected = select_from_assay(assay, max_dms=settings.max_dms, n=settings.n, seed=settings.seed,
                                     where=f"{protein} (mutations.max_dms / proteins.{protein}.max_dms)")
        selected = np.asarray(selected, dtype=bool)
    elif settings.source == "model":
        mutants = all_single_mutants(wt_seq)
        dms_score = np.full(len(mutants), np.nan)
        if assay is not None:
            by_name = dict(zip(assay["mutant"], assay["dms_score"], strict=True))
            dms_score = np.array([by_name.get(m.name, np.nan) for m in mutants], dtype=float)
        selected = None
    else:
        raise InputError(f"mutations.source must be 'dms' or 'model', got {settings.source!r}")

    if len(wt_seq) + 2 <= MAX_TOKENS:
        windows = [(0, len(wt_seq) + 2)] * len(mutants)
        by_forward = {a: wt_marginal(lm.on(a), wt_log_probs(lm.on(a), wt_seq), mutants) for a in ACTIVATIONS}
    else:  # longer than the model's context: each mutant on its own window (METHOD.md "Long sequences")
        found = [mutant_window(m, len(wt_seq)) for m in mutants]
        keep = np.array([w is not None for w in found], dtype=bool)
        if not keep.all():
            log.warning("%s: %d mutants skipped, their sites further apart than the model's window of %d tokens "
                        "(first: %s)", protein, int((~keep).sum()), MODEL_WINDOW,
                        ", ".join(m.name for m, k in zip(mutants, keep, strict=True) if not k)[:200])
        mutants = [m for m, k in zip(mutants, keep, strict=True) if k]
        dms_score = dms_score[keep]
        selected = None if selected is None else selected[keep]
        windows = [w for w in found if w is not None]
        by_forward = {a: windowed_scores(lm.on(a), wt_seq, mutants, windows) for a in ACTIVATIONS}
        log.info("%s: %d residues, longer than the model's context: %d mutants scored on %d windows", protein,
                 len(wt_seq), len(mutants), len(set(windows)))
    score = by_forward[lm.activations]
    if not all(np.isfinite(values).all() for values in by_forward.values()):
        raise InputError(f"{protein}: the model's log-probabilities contain NaN or Inf (check the checkpoint)")
    if selected is None:
        selected = select_lowest(score, settings.n)
        log.info("%s: %d in-silico singles scored, the %d lowest selected", protein, len(mutants),
                 int(selected.sum()))
    return pd.DataFrame({
        "mutant": [m.name for m in mutants],
        "position": [":".join(str(s.pos) for s in m.sites) for m in mutants],
        "wt": [":".join(s.wt for s in m.sites) for m in mutants],
        "mut": [":".join(s.mut for s in m.sites) for m in mutants],
        "wt_marginal": score,
        "dms_score": dms_score,
        "selected": np.asarray(selected, dtype=bool),
        "activations": lm.activations,
        **{"wt_marginal_" + a.replace("-", "_"): values for a, values in by_forward.items()},
        "window_start": [w[0] for w in windows], "window_end": [w[1] for w in windows],
    }, columns=SCORE_COLUMNS)


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read a scores table written by :func:`scores_table`."""
    return read_table(path, "scores")


def score_mutations(protein: Protein, forward: Forward, runtime: Runtime, checkpoint: str | Path,
                    assay: str | Path | None, out: str | Path) -> None:
    """Rule score_mutations: WT-marginal scores (on both forwards, the study's first) and the selection."""
    lm = open_model(checkpoint, forward, runtime)
    table = scores_table(lm, protein.name, protein.wt_seq, assay, protein.selection)
    if forward.precision != "fp32":  # report the drift from fp32 on the same mutants
        reference = open_model(checkpoint, dataclasses.replace(forward, precision="fp32"), runtime)
        fp32 = scores_table(reference, protein.name, protein.wt_seq, assay, protein.selection)
        drift = (table["wt_marginal"] - fp32["wt_marginal"]).abs()
        log.warning("precision %s: wt_marginal differs from fp32 by max %.4g, median %.4g over %d mutants",
                    forward.precision, drift.max(), drift.median(), len(drift))
    log.info("%s: %d mutants scored, %d selected", protein.name, len(table), int(table["selected"].sum()))
    write_csv(table, out)


def selected_mutants(wt_seq: str, scores: str | Path) -> list[Mutant]:
    """The selected mutants of one protein, read back from its scores table."""
    table = read_scores(scores)
    names = table.loc[table["selected"].astype(bool), "mutant"]
    return [parse_mutant(name, wt_seq, where=f"{scores}") for name in names]
