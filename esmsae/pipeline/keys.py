"""Named inputs keyed by protein and layer: how a rule names them, and how its script reads them back.

A rule that gathers one file per protein, or per (protein, layer), names each input
``<kind>:<protein>`` or ``<kind>:<protein>:<layer>`` (``rules/common.smk`` builds them
with :func:`key`); the script gets ``{protein: path}`` or ``{(protein, layer): path}``
back with :func:`keyed`, in the rule's order. No list is zipped against another by
position. Nothing here imports torch (the Snakefile imports it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

SEP = ":"
# The fields of an input keyed by protein and layer.
PAIR = ("protein", "layer")


def key(kind: str, *parts: object) -> str:
    """The name of one input: its kind, then the protein and/or layer it belongs to."""
    return SEP.join([kind, *(str(part) for part in parts)])


def keyed(named: Iterable[tuple[str, Any]] | Mapping[str, Any], kind: str, fields: tuple[str, ...]) -> dict:
    """The inputs of one `kind` by what they belong to: one field gives ``{value: path}``, several
    ``{(values...): path}``; a ``layer`` field is an int. `named` is ``snakemake.input`` (or its items)."""
    items = named.items() if hasattr(named, "items") else named
    out = {}
    for name, path in items:
        head, _, rest = name.partition(SEP)
        if head != kind:
            continue
        values = rest.split(SEP)
        if len(values) != len(fields):
            raise ValueError(f"input {name!r}: expected {kind}{SEP}{SEP.join(fields)}")
        values = tuple(int(v) if field == "layer" else v for field, v in zip(fields, values, strict=True))
        out[values[0] if len(values) == 1 else values] = path
    return out
