"""Rule tabulate_circuit_sizes: each mutant's minimal circuit, read off the measured curves.

METHOD.md "Minimal circuit". The curves are ``circuits/{protein}_L{layer}.csv``
(:func:`esmsae.analyses.circuits.curves_table`); the thresholds ``circuits.recover`` and
``min_effect`` are applied here, so changing them never reruns the measurement.
Pure numpy/pandas: nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.config.settings import CircuitSizeSettings
from esmsae.pipeline.columns import (
    SIZE_COLUMNS,
    TABLES,
    read_table,
    typed_frame,
)
from esmsae.pipeline.io import write_csv
from esmsae.tables.labels import label_lookup


def minimal_size(recovered: np.ndarray, recover: float) -> float:
    """The smallest n whose ``r_n`` is within ``1 − recover`` of 1 (both ways), NaN if none.

    With recover 0.9: ``[0, 0.5, 1.3, 0.95]`` gives 3 (1.3 overshoots by 30 %), ``[0, 0.89]`` none.
    """
    r = np.asarray(recovered, dtype=np.float64)
    within = np.abs(r - 1) <= (1 - recover) + 1e-12  # a fraction exactly on the bound is within it
    hits = np.flatnonzero(within & np.isfinite(r))
    return float(hits[0]) if len(hits) else float("nan")


def negligible(full_effect, min_effect: float):
    """``|F| < min_effect``: a mutant whose ratios would divide by almost nothing (elementwise)."""
    return np.abs(np.asarray(full_effect, dtype=np.float64)) < min_effect


def circuit_sizes_from_curves(curves: pd.DataFrame, protein: str, settings: CircuitSizeSettings) -> pd.DataFrame:
    """Each mutant's minimal circuit, read off its curves (METHOD.md "Minimal circuit").

    `curves` is one (protein, layer)'s table of ``esmsae.analyses.circuits.curves_table`` (rows n = 0..max_k
    per mutant, ``feature`` the one joining at n). One row per mutant, in the table's order: its
    ``full_effect``, ``negligible`` (|F| < ``min_effect``), ``n_features`` (the smallest n with
    ``|r_n − 1| ≤ 1 − recover``; empty if negligible or none), the ``recovered_fraction`` r_n there
    and the circuit's ``features`` (``;``-joined, ascending), with the curves' settings. Example:
    r = [0, 0.5, 1.3, 0.95] joined by features 7, 2, 9 gives n 3, r 0.95, features ``2;7;9``.
    """
    rows = []
    for mutant, part in curves.groupby("mutant", sort=False):
        part = part.sort_values("n_features", kind="stable")
        if not np.array_equal(part["n_features"].to_numpy(), np.arange(len(part))):
            raise ValueError(f"circuit curves of {protein} {mutant}: n_features is not 0, 1, ..., n")
        first = part.iloc[0]
        small = bool(negligible(first["full_effect"], settings.min_effect))
        size = float("nan") if small else minimal_size(part["recovered_fraction"].to_numpy(), settings.recover)
        joined = part["feature"].to_numpy()[1:]
        features = [] if np.isnan(size) else sorted(int(j) for j in joined[: int(size)])
        rows.append({"protein": protein, "layer": int(first["layer"]), "mutant": mutant,
                     "full_effect": float(first["full_effect"]), "negligible": small, "n_features": size,
                     "recovered_fraction": (float("nan") if np.isnan(size)
                                            else float(part["recovered_fraction"].iloc[int(size)])),
                     "features": ";".join(str(j) for j in features), "k": int(first["k"]),
                     "d_sae": int(first["d_sae"]), "space": first["space"], "activations": first["activations"]})
    table = pd.DataFrame(rows, columns=SIZE_COLUMNS)
    table["n_features"] = table["n_features"].astype("Int64")
    return table


def circuit_sizes(sizes: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """The circuit-size tables one after another, typed: ``n_features`` is ``Int64`` (<NA>: no minimal
    circuit within max_k, or a negligible mutant) and ``negligible`` is bool."""
    parts = []
    for i, table in enumerate(sizes):
        where = _size_where(i, table)
        missing = [c for c in SIZE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"circuit sizes {where}: missing columns {missing}")
        try:
            size = pd.array(table["n_features"], dtype="Int64")
        except (TypeError, ValueError) as error:
            raise ValueError(f"circuit sizes {where}: n_features is not integer or empty ({error})") from None
        if (size < 0).any():
            raise ValueError(f"circuit sizes {where}: negative n_features")
        negligible = table["negligible"].astype(str).str.lower().map({"true": True, "false": False})
        if negligible.isna().any():
            raise ValueError(f"circuit sizes {where}: negligible is not True/False")
        if (negligible.to_numpy(dtype=bool) & ~pd.isna(size)).any():
            raise ValueError(f"circuit sizes {where}: a negligible mutant has a circuit size")
        part = table[SIZE_COLUMNS].copy()
        part["n_features"], part["negligible"] = size, negligible.to_numpy(dtype=bool)
        part["features"] = part["features"].fillna("").astype(str)
        parts.append(part)
    if not parts:
        frame = typed_frame([], SIZE_COLUMNS, layer="int64", full_effect="float64")
        frame["n_features"] = frame["n_features"].astype("Int64")
        return frame
    return pd.concat(parts, ignore_index=True).astype({"layer": "int64", "full_effect": "float64"})


def _size_where(i: int, table: pd.DataFrame) -> str:
    if len(table) and "protein" in table.columns and "layer" in table.columns:
        return f"({table['protein'].iloc[0]!r}, layer {table['layer'].iloc[0]})"
    return f"#{i}"


log = logging.getLogger("esmsae")


def minimal_circuits(curves: Mapping[tuple[str, int], Path], settings: CircuitSizeSettings) -> pd.DataFrame:
    """Every mutant's minimal circuit at every (protein, layer), read off the curves find_circuits measured."""
    return circuit_sizes(
        circuit_sizes_from_curves(read_table(path, "circuit_curves"), protein, settings)
        for (protein, _), path in curves.items())


def tabulate_circuit_sizes(curves: Mapping[tuple[str, int], Path], settings: CircuitSizeSettings,
                           labels_table: str | Path, out: str | Path) -> None:
    """Rule tabulate_circuit_sizes: minimal circuit of every mutant, all proteins and layers, its features labelled."""
    table = minimal_circuits(curves, settings)
    names = label_lookup(read_table(labels_table, "feature_labels"))
    table.insert(table.columns.get_loc("features") + 1, "labels",
                 [" | ".join(names.get((int(layer), int(j)), "") for j in str(features).split(";") if j)
                  for layer, features in zip(table["layer"], table["features"], strict=True)])
    write_csv(table[TABLES["circuit_sizes_labelled"]], out)
