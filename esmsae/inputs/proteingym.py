"""The studied proteins read from ProteinGym's reference file (config key ``proteingym``).

``DMS_substitutions.csv`` has one row per substitution assay; the columns used are ``DMS_id`` (the
protein's name in the study), ``target_seq`` (its WT sequence) and ``DMS_filename`` (its assay file,
found in ``proteingym.dms_dir``). ``assays`` is ``all`` or a list of ``DMS_id``s. Every error names the
file, the row or the ``DMS_id``, and the config key. Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from esmsae.pipeline.errors import InputError

REFERENCE_COLUMNS = ("DMS_id", "target_seq", "DMS_filename")


def read_reference(reference: str | os.PathLike, dms_dir: str | os.PathLike,
                   assays: str | list[str]) -> dict[str, dict[str, str]]:
    """``{DMS_id: {"wt_seq", "dms"}}`` for the selected assays, in the reference file's order."""
    path = Path(reference)
    if not path.is_file():
        raise InputError(f"{path}: ProteinGym reference file not found (config key proteingym.reference)")
    try:
        table = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({err}) (config key proteingym.reference)") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: not a ProteinGym reference file (missing column(s) {', '.join(missing)})")
    duplicated = table.loc[table["DMS_id"].duplicated(), "DMS_id"].tolist()
    if duplicated:
        raise InputError(f"{path}: DMS_id {duplicated[0]!r} appears more than once")
    for row, (name, seq, file) in enumerate(zip(table["DMS_id"], table["target_seq"], table["DMS_filename"],
                                                strict=True), start=2):
        if not isinstance(name, str) or not isinstance(seq, str) or not isinstance(file, str):
            raise InputError(f"{path}, line {row}: DMS_id, target_seq and DMS_filename must all be given")
    if assays == "all":
        chosen = table
    else:
        unknown = sorted(set(assays) - set(table["DMS_id"]))
        if unknown:
            raise InputError(f"config key proteingym.assays: {unknown} not in {path}")
        chosen = table[table["DMS_id"].isin(set(assays))]
    out = {}
    for name, seq, file in zip(chosen["DMS_id"], chosen["target_seq"], chosen["DMS_filename"], strict=True):
        assay = Path(dms_dir) / file
        if not assay.is_file():
            raise InputError(f"{name}: assay file {assay} not found (config key proteingym.dms_dir)")
        out[name] = {"wt_seq": seq, "dms": str(assay)}
    return out
