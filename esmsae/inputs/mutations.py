"""Mutant strings, ProteinGym assay files and mutation selection (METHOD.md "Mutation selection").

Mutants use the ProteinGym form: a site is ``V5H`` (WT residue, 1-based position, mutant
residue) and a multi-site mutant joins sites with ``:`` (``D39R:R41S``). Every problem with
a user-supplied sequence, file row or setting raises :class:`esmsae.pipeline.errors.InputError` with
one line that names the file and row or the config key at fault.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from esmsae.pipeline.errors import InputError

log = logging.getLogger(__name__)


AMINO_ACIDS: str = "ACDEFGHIKLMNPQRSTVWY"


REQUIRED_COLUMNS: tuple[str, ...] = ("mutant", "mutated_sequence", "DMS_score")


_SITE_RE = re.compile(r"^[A-Z]\d+[A-Z]$")


_CANONICAL = frozenset(AMINO_ACIDS)


@dataclass(frozen=True)
class Site:
    """One substitution: WT residue `wt` at 1-based position `pos` becomes `mut`."""

    wt: str
    pos: int
    mut: str

    @property
    def name(self) -> str:
        """ProteinGym text of the site, e.g. ``V5H``."""
        return f"{self.wt}{self.pos}{self.mut}"


@dataclass(frozen=True)
class Mutant:
    """A validated mutant: canonical `name` (sites joined by ':' in the order given) and its sites."""

    name: str
    sites: tuple[Site, ...]

    @property
    def n_sites(self) -> int:
        """Number of substituted sites."""
        return len(self.sites)

    def apply(self, wt_seq: str) -> str:
        """Return `wt_seq` with every site substituted; InputError if `wt_seq` does not fit."""
        residues = list(wt_seq)
        for site in self.sites:
            if not 1 <= site.pos <= len(residues):
                raise InputError(
                    f"mutant {self.name!r}: position {site.pos} is outside the sequence "
                    f"(1..{len(residues)})"
                )
            if residues[site.pos - 1] != site.wt:
                raise InputError(
                    f"mutant {self.name!r}: sequence has {residues[site.pos - 1]!r} at position "
                    f"{site.pos}, not {site.wt!r}"
                )
            residues[site.pos - 1] = site.mut
        return "".join(residues)


def check_wt_sequence(seq: str, where: str) -> str:
    """Return an uppercase, whitespace-stripped copy of `seq`; InputError naming `where` if invalid."""
    if not isinstance(seq, str):
        raise InputError(f"{where}: the WT sequence must be a string, got {type(seq).__name__}")
    clean = seq.strip().upper()
    if not clean:
        raise InputError(f"{where}: the WT sequence is empty")
    for i, letter in enumerate(clean, start=1):
        if letter not in _CANONICAL:
            raise InputError(
                f"{where}: the WT sequence has {letter!r} at position {i}, "
                f"which is not one of the 20 canonical residues {AMINO_ACIDS}"
            )
    return clean


def parse_mutant(text: str, wt_seq: str, where: str = "") -> Mutant:
    """Parse ProteinGym mutant text (``V5H`` or ``D39R:R41S``) and check it against `wt_seq`.

    Error messages start with `where` when given (else with the mutant text).
    """
    prefix = where if where else f"mutant {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{prefix}: the mutant text is empty")
    sites: list[Site] = []
    seen: set[int] = set()
    for part in text.strip().split(":"):
        if not _SITE_RE.match(part):
            raise InputError(
                f"{prefix}: site {part!r} is malformed; expected WT residue, 1-based position, "
                f"mutant residue (e.g. 'V5H'), sites joined by ':'"
            )
        wt, pos, mut = part[0], int(part[1:-1]), part[-1]
        for role, letter in (("WT", wt), ("mutant", mut)):
            if letter not in _CANONICAL:
                raise InputError(
                    f"{prefix}: site {part!r} has {role} residue {letter!r}, "
                    f"which is not one of the 20 canonical residues {AMINO_ACIDS}"
                )
        if not 1 <= pos <= len(wt_seq):
            raise InputError(
                f"{prefix}: site {part!r} has position {pos}, outside the WT sequence "
                f"(1..{len(wt_seq)})"
            )
        if wt_seq[pos - 1] != wt:
            raise InputError(
                f"{prefix}: site {part!r} says WT residue {wt!r} at position {pos}, "
                f"but the WT sequence has {wt_seq[pos - 1]!r} there"
            )
        if wt == mut:
            raise InputError(f"{prefix}: site {part!r} is synonymous (WT and mutant residue are equal)")
        if pos in seen:
            raise InputError(f"{prefix}: position {pos} appears more than once in one mutant")
        seen.add(pos)
        sites.append(Site(wt=wt, pos=pos, mut=mut))
    return Mutant(name=":".join(s.name for s in sites), sites=tuple(sites))


def all_single_mutants(wt_seq: str) -> list[Mutant]:
    """All 19·L single substitutions, by position, then by `AMINO_ACIDS` order of the mutant residue."""
    seq = check_wt_sequence(wt_seq, "wt_seq")
    singles: list[Mutant] = []
    for pos, wt in enumerate(seq, start=1):
        for mut in AMINO_ACIDS:
            if mut != wt:
                site = Site(wt=wt, pos=pos, mut=mut)
                singles.append(Mutant(name=site.name, sites=(site,)))
    return singles


def _first_difference(got: str, expected: str) -> str:
    """Describe where two sequences first differ (for error messages)."""
    for i, (a, b) in enumerate(zip(got, expected, strict=False), start=1):
        if a != b:
            return f"first difference at position {i}: file has {a!r}, expected {b!r}"
    return f"file sequence has length {len(got)}, expected {len(expected)}"


def read_assay(path: str | os.PathLike, wt_seq: str, *, multi: bool = False) -> pd.DataFrame:
    """Read and validate a ProteinGym assay CSV against `wt_seq`.

    Every row is checked (mutant text, mutated_sequence, finite DMS_score, no duplicate
    mutants). Multi-site rows are dropped unless `multi` is True.

    Returns one row per kept mutant, in file order, with columns ``mutant`` (canonical name),
    ``n_sites``, ``dms_score``, ``parsed`` (the :class:`Mutant`) and ``row`` (1-based data row
    number in the file), on a fresh RangeIndex.
    """
    name = str(path)
    seq = check_wt_sequence(wt_seq, f"WT sequence for {name}")
    if not os.path.isfile(path):
        raise InputError(f"{name}: assay file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{name}: cannot be read as CSV ({' '.join(str(err).split())})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(
            f"{name}: missing required column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, raw.columns))})"
        )

    records: list[dict[str, object]] = []
    first_row: dict[frozenset[Site], int] = {}
    n_multi_dropped = 0
    for n, (text, mutated, score_text) in enumerate(
        zip(raw["mutant"], raw["mutated_sequence"], raw["DMS_score"], strict=True), start=1
    ):
        where = f"{name}, row {n} ({text!r})"
        mutant = parse_mutant(text, seq, where=where)
        expected = mutant.apply(seq)
        if mutated.strip() != expected:
            raise InputError(
                f"{where}: mutated_sequence is not the WT sequence with this mutant applied "
                f"({_first_difference(mutated.strip(), expected)})"
            )
        try:
            score = float(score_text)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise InputError(f"{where}: DMS_score {score_text!r} is not a finite number")
        key = frozenset(mutant.sites)
        if key in first_row:
            raise InputError(f"{where}: duplicate mutant, same as row {first_row[key]}")
        first_row[key] = n
        if mutant.n_sites > 1 and not multi:
            n_multi_dropped += 1
            continue
        records.append(
            {
                "mutant": mutant.name,
                "n_sites": mutant.n_sites,
                "dms_score": score,
                "parsed": mutant,
                "row": n,
            }
        )

    frame = pd.DataFrame.from_records(
        records, columns=["mutant", "n_sites", "dms_score", "parsed", "row"]
    ).astype({"mutant": str, "n_sites": int, "dms_score": float, "row": int})
    log.info(
        "%s: %d rows read, %d kept, %d dropped (multi-site, multi=%s)",
        name, len(raw), len(frame), n_multi_dropped, multi,
    )
    return frame


def select_from_assay(
    assay: pd.DataFrame, *, max_dms: float | None, n: int, seed: int, where: str
) -> pd.Series:
    """Select rows per METHOD.md: ``dms_score <= max_dms``, then at most `n` drawn with `seed`.

    The draw uses ``numpy.random.default_rng(seed)`` without replacement and is returned in
    file order, as a boolean mask aligned to ``assay.index``. `where` prefixes every error and
    log line; it should name the config key(s) and protein, e.g.
    ``"mutations.max_dms=-3.0 for EPHB2_HUMAN"``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"{where}: n must be a positive integer, got {n!r}")
    if max_dms is not None and (isinstance(max_dms, bool) or not math.isfinite(float(max_dms))):
        raise InputError(f"{where}: max_dms must be a finite number or null, got {max_dms!r}")
    if "dms_score" not in assay.columns:
        raise InputError(f"{where}: the assay table has no dms_score column")
    total = len(assay)
    if total == 0:
        raise InputError(f"{where}: the assay has no rows to select from")

    scores = assay["dms_score"].to_numpy(dtype=float)
    passing = np.ones(total, dtype=bool) if max_dms is None else scores <= float(max_dms)
    n_pass = int(passing.sum())
    if n_pass == 0:
        raise InputError(f"{where}: 0 of {total} rows have DMS_score <= {max_dms}")

    candidates = np.flatnonzero(passing)
    if n_pass > n:
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, size=n, replace=False))
    mask = np.zeros(total, dtype=bool)
    mask[candidates] = True
    log.info(
        "%s: %d rows read, %d kept; dropped %d with DMS_score > %s, %d beyond n=%d (seed %d)",
        where, total, len(candidates), total - n_pass, max_dms, n_pass - len(candidates), n, seed,
    )
    return pd.Series(mask, index=assay.index, name="selected")


def selectable_count(path: str | os.PathLike, max_dms: float | None, n: int, multi: bool) -> int:
    """How many rows :func:`select_from_assay` would select from the assay file at `path` (its singles, or every
    row with `multi`, with ``DMS_score <= max_dms``, at most `n`), counted without validating the rows: it
    only ranks proteins for the figures (``figures.proteins``)."""
    table = pd.read_csv(path, usecols=["mutant", "DMS_score"])
    keep = np.ones(len(table), dtype=bool) if multi else ~table["mutant"].astype(str).str.contains(":").to_numpy()
    if max_dms is not None:
        keep &= table["DMS_score"].to_numpy(dtype=float) <= float(max_dms)
    return min(n, int(keep.sum()))


def select_lowest(scores: Sequence[float], n: int) -> np.ndarray:
    """Mask of the `n` lowest scores (``source: model``); ties keep earlier rows first."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {values.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"mutations.n: must be a positive integer, got {n!r}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"scores contain {int((~np.isfinite(values)).sum())} non-finite value(s)")
    mask = np.zeros(len(values), dtype=bool)
    mask[np.argsort(values, kind="stable")[:n]] = True
    log.info("lowest scores: %d read, %d kept, %d dropped (not among the %d lowest)",
             len(values), int(mask.sum()), len(values) - int(mask.sum()), n)
    return mask


# ESM-2's context: 1,024 tokens, BOS and EOS included (METHOD.md "Long sequences").
MODEL_WINDOW = 1024


def optimal_window(token: int, n_tokens: int, window: int = MODEL_WINDOW) -> tuple[int, int]:
    """ProteinGym's ``get_optimal_window``: the `window`-token slice ``[start, end)`` of a sequence of `n_tokens`
    tokens (BOS and EOS included) for a site at token `token`: the whole sequence when it fits, else centred on
    the token and shifted to lie inside the sequence (so it keeps BOS or EOS only where it reaches a real end)."""
    half = window // 2
    if n_tokens <= window:
        return 0, n_tokens
    if token < half:
        return 0, window
    if token >= n_tokens - half:
        return n_tokens - window, n_tokens
    return max(0, token - half), min(n_tokens, token + half)


def mutant_window(mutant: Mutant, length: int, window: int = MODEL_WINDOW) -> tuple[int, int] | None:
    """The slice of a mutant of a WT sequence of `length` residues: centred on the middle of its sites (residue
    i is token i); None when its sites lie further apart than the window can hold."""
    positions = [s.pos for s in mutant.sites]
    start, end = optimal_window((min(positions) + max(positions)) // 2, length + 2, window)
    if min(positions) < start or max(positions) >= end:
        return None
    return start, end


def within_context(wt_seqs: Mapping[str, str], what: str, window: int = MODEL_WINDOW) -> dict[str, str]:
    """The sequences of `wt_seqs` the model reads whole. Only per-mutant analyses run on windows (METHOD.md
    "Long sequences"); a whole-sequence stage (`what`) leaves a longer one out, and says so."""
    kept = {name: seq for name, seq in wt_seqs.items() if len(seq) + 2 <= window}
    left = [f"{name} ({len(seq)} residues)" for name, seq in wt_seqs.items() if name not in kept]
    if left:
        log.warning("%s: %d protein(s) longer than the model's context of %d tokens left out: %s", what, len(left),
                    window, ", ".join(left))
    return kept
