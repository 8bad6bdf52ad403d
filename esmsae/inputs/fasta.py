"""Reference sequences for feature labels: a FASTA file read as a stream (METHOD.md "Feature characterization").

:func:`read_fasta` yields one record at a time and never holds the file in memory, so a
UniRef or Swiss-Prot sample of any size streams. Every problem gets one error naming the
file and the record: an empty file, a record without a name or a sequence, a character
that is not an amino-acid code, a name used twice. Sequences with amino-acid codes the
model's vocabulary has but the study does not use (X, B, Z, J, U, O) and sequences longer
than the model's context are skipped and counted (:class:`Skipped`), not errors: real
reference sets have them. Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from esmsae.inputs.mutations import AMINO_ACIDS
from esmsae.pipeline.errors import InputError

CANONICAL = frozenset(AMINO_ACIDS)


# IUPAC amino-acid codes beyond the 20: unknown, ambiguous and rare residues.
OTHER_CODES = frozenset("XBZJUO")


@dataclass
class Skipped:
    """How many reference sequences were left out, and why."""

    too_long: int = 0
    other_residues: int = 0
    reached_max: bool = False  # the file was read only up to max_sequences usable records
    names: list[str] = field(default_factory=list)  # the first few skipped, for the log

    def total(self) -> int:
        return self.too_long + self.other_residues


def read_fasta(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """``(name, sequence)`` of every record, in file order, checked, upper-cased, a final ``*`` dropped."""
    name, parts, line_of_record, seen, n = None, [], 0, set(), 0
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: reference FASTA not found (config key features.reference)") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    if name is not None:
                        yield _record(path, name, parts, line_of_record)
                        n += 1
                    name = line[1:].split()[0] if line[1:].strip() else ""
                    if not name:
                        raise InputError(f"{path}, line {number}: a FASTA record without a name")
                    if name in seen:
                        raise InputError(f"{path}, record {name!r} (line {number}): the name is used twice")
                    seen.add(name)
                    parts, line_of_record = [], number
                elif name is None:
                    raise InputError(f"{path}, line {number}: sequence data before the first '>' header "
                                     "(not a FASTA file?)")
                else:
                    parts.append(line)
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: not a text FASTA file ({err.reason})") from None
    if name is None:
        raise InputError(f"{path}: the reference FASTA has no records (config key features.reference)")
    yield _record(path, name, parts, line_of_record)


def _record(path, name: str, parts: list[str], line: int) -> tuple[str, str]:
    seq = "".join(parts).upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        raise InputError(f"{path}, record {name!r} (line {line}): the sequence is empty")
    bad = sorted(set(seq) - CANONICAL - OTHER_CODES)
    if bad:
        raise InputError(f"{path}, record {name!r} (line {line}): {''.join(bad)!r} is not an amino-acid code")
    return name, seq


def reference_sequences(wt_seqs: dict[str, str], fasta: str | os.PathLike | None, max_sequences: int,
                        max_length: int, skipped: Skipped) -> Iterator[tuple[str, str]]:
    """The configured WT sequences, then the first `max_sequences` usable records of `fasta` (if any).

    A record longer than `max_length` residues or with a residue outside the 20 is skipped and
    counted in `skipped`; reading stops once `max_sequences` records were used.
    """
    yield from wt_seqs.items()
    if fasta is None:
        return
    used = 0
    for name, seq in read_fasta(fasta):
        if used >= max_sequences:
            skipped.reached_max = True
            return
        if len(seq) > max_length:
            skipped.too_long += 1
        elif set(seq) - CANONICAL:
            skipped.other_residues += 1
        else:
            used += 1
            yield name, seq
            continue
        if len(skipped.names) < 5:
            skipped.names.append(name)
