"""Biological concepts of a protein's WT residues: UniProt GFF3 features, and the assay's own sensitive sites.

METHOD.md "Concepts (biological labels)". A concept is a named set of WT residue positions (1-based):

* from a UniProt GFF3 file (what ``https://rest.uniprot.org/uniprotkb/{accession}.gff`` returns): each
  feature line is ``seqid, source, type, start, end, score, strand, phase, attributes``, columns 4–5 the
  1-based inclusive UniProt coordinates. A feature of type ``t`` makes the concept ``t``, and ``t:note``
  where its attributes name a ``Note``. WT residue i is UniProt residue ``i + offset``. A feature with
  no residue inside the WT sequence is dropped (and counted); one partly inside keeps the residues that
  are. ``Disulfide bond`` and ``Cross-link`` features name two residues (start and end), not a range.
* ``dms_sensitive`` (:func:`dms_sensitive`): residues whose mean DMS score over their single substitutions
  is in the lowest quartile of the protein's sites (residues without singles excluded).

A malformed line is one error naming the file and the line. Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import atomic_path

log = logging.getLogger(__name__)

UNIPROT_GFF = "https://rest.uniprot.org/uniprotkb/{accession}.gff"
# Feature types whose start and end are two bonded residues, not a range.
PAIRED_TYPES = frozenset({"Disulfide bond", "Cross-link"})
DMS_SENSITIVE = "dms_sensitive"


@dataclass
class Concepts:
    """One protein's concepts: name -> the WT residue positions (1-based) in it; and what was dropped."""

    positions: dict[str, set[int]] = field(default_factory=dict)
    dropped: int = 0        # features with no residue inside the WT sequence
    clipped: int = 0        # features partly outside it

    def add(self, name: str, residues: Iterable[int]) -> None:
        self.positions.setdefault(name, set()).update(residues)


def parse_attributes(text: str) -> dict[str, str]:
    """GFF3 column 9, ``key=value;key=value`` with percent-encoded values."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, value = part.partition("=")
        out[key.strip()] = urllib.parse.unquote(value.strip())
    return out


def read_gff(path: str | os.PathLike, length: int, offset: int = 0) -> Concepts:
    """The concepts of a UniProt GFF3 file on a WT sequence of `length` residues (WT i = UniProt i + offset)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: annotation file not found (config key proteins.<name>.annotations)")
    concepts = Concepts()
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip() or line.startswith("#"):
                if line.startswith("##FASTA"):
                    break
                continue
            columns = line.split("\t")
            if len(columns) != 9:
                raise InputError(f"{path}, line {number}: a GFF3 feature line has 9 tab-separated columns, "
                                 f"this one has {len(columns)}")
            kind = columns[2].strip()
            try:
                start, end = int(columns[3]), int(columns[4])
            except ValueError:
                raise InputError(f"{path}, line {number}: start and end ({columns[3]!r}, {columns[4]!r}) must be "
                                 "integers") from None
            if not kind or start < 1 or end < start:
                raise InputError(f"{path}, line {number}: need a type and 1 <= start <= end, got {kind!r} "
                                 f"{start}..{end}")
            uniprot = [start, end] if kind in PAIRED_TYPES else range(start, end + 1)
            residues = [u - offset for u in uniprot]
            inside = [i for i in residues if 1 <= i <= length]
            if not inside:
                concepts.dropped += 1
                continue
            concepts.clipped += len(inside) < len(residues)
            note = parse_attributes(columns[8]).get("Note", "").strip()
            concepts.add(kind, inside)
            if note:
                concepts.add(f"{kind}:{note}", inside)
    return concepts


def dms_sensitive(scores: pd.DataFrame) -> set[int]:
    """Residues whose mean DMS score over their single substitutions is at most the 25th percentile (numpy's
    linear interpolation) of the sites' means: the lowest quartile. Residues without singles are excluded."""
    singles = scores[~scores["mutant"].astype(str).str.contains(":") & scores["dms_score"].notna()]
    if singles.empty:
        return set()
    means = singles.groupby(singles["position"].astype(int))["dms_score"].mean()
    bar = float(np.quantile(means.to_numpy(dtype=np.float64), 0.25))
    return {int(p) for p, value in means.items() if value <= bar}


def download_gff(accession: str, out: str | os.PathLike, *, timeout: float = 60.0,
                 opener=urllib.request.urlopen) -> None:
    """Fetch UniProt's GFF3 for `accession` into `out` (atomically); one error naming the accession if it fails."""
    url = UNIPROT_GFF.format(accession=urllib.parse.quote(accession))
    try:
        with opener(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise InputError(f"proteins.<name>.uniprot {accession!r}: cannot fetch {url} ({err}); on a machine without "
                         "internet, download it elsewhere and set proteins.<name>.annotations to the file") from None
    if not data.lstrip().startswith(b"##gff-version"):
        raise InputError(f"{url}: the answer is not a GFF3 file (starts {data[:40]!r})")
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
    log.info("fetched %s (%d bytes) into %s", url, len(data), out)
