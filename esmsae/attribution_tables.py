"""Concentration, consistency and universality of IG attributions, and minimal-circuit sizes.

METHOD.md "Concentration and universality" and "Minimal circuit". The inputs are the IG results
per (protein, layer), each an :class:`esmsae.arrays.Attributions` (or a dict of the same arrays,
checked into one: ``mutant``, ``attribution`` of shape ``(n, d_sae)``, ``error_attribution``,
``total_effect``, ``completeness_error``; ``n`` may be 0), and the circuit-size tables of
``esmsae.circuits.sizes_table``.

Proteins keep the order of their first appearance among the keys; layers are ascending. A
mutant's top-n features are the n largest ``|A_j|`` with ties going to the lower feature index
(a stable sort on ``-|A|``); a feature with ``A_j = 0`` is never in a top-n. Outputs have a
fixed row order, so their CSVs are byte-identical across runs.

Pure numpy/pandas: nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from esmsae.arrays import Attributions
from esmsae.columns import CONCENTRATION_COLUMNS, CONSISTENCY_COLUMNS, SIZE_COLUMNS

TOP_N = 20

Result = Attributions | Mapping[str, np.ndarray]
Results = Mapping[tuple[str, int], Result]


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values, ``Σ_i (2i − n − 1) x_(i) / (n Σ x)`` over ascending x, i = 1..n.

    This is the standard (sample) form, bounded by ``(n − 1)/n``: 0 when all values are equal,
    ``(n − 1)/n`` when a single value is nonzero (0.75 for ``[0, 0, 0, 1]``). All zeros give 0.0;
    an empty input gives NaN. Negative or non-finite values raise ``ValueError``.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if not np.isfinite(x).all():
        raise ValueError("gini: values must be finite")
    if x.size and x[0] < 0:
        raise ValueError("gini: values must be non-negative")
    n = x.size
    if n == 0:
        return float("nan")
    total = x.sum()
    if total == 0:
        return 0.0
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


def top_share(abs_attr: np.ndarray, n: int = TOP_N) -> float:
    """``Σ top-n |A| / Σ |A|`` (absolute values are taken here too); NaN when ``Σ |A| = 0``."""
    _check_n(n)
    a = np.abs(np.asarray(abs_attr, dtype=np.float64).ravel())
    total = a.sum()
    if total == 0:
        return float("nan")
    return float(np.sort(a)[::-1][:n].sum() / total)


def top_n_features(attribution: np.ndarray, n: int = TOP_N) -> list[np.ndarray]:
    """Each row's top-n feature indices by ``|A|`` (ties: lower index first), leaving out ``A_j = 0``."""
    _check_n(n)
    a = np.abs(np.asarray(attribution, dtype=np.float64))
    order = np.argsort(-a, axis=1, kind="stable")[:, :n]
    return [row[a[m, row] > 0] for m, row in enumerate(order)]


def ig_concentration(results: Results) -> pd.DataFrame:
    """Concentration of |A| per (protein, layer): Gini, top-20 share, completeness and error-node share.

    Per mutant: Gini and top-20 share of ``|A_j|`` over all features, and the error share
    ``|A_err| / (Σ_j |A_j| + |A_err|)`` (NaN when that is 0). Means and the median skip NaN
    (NaN when nothing is left); ``std_gini`` has ddof=1 (NaN for fewer than 2 mutants).
    """
    rows = []
    for protein, layer, result in ordered_results(results):
        a = np.abs(result.attribution)
        err = np.abs(result.error_attribution)
        n = a.shape[0]
        ginis = np.array([gini(row) for row in a], dtype=np.float64)
        shares = np.array([top_share(row, TOP_N) for row in a], dtype=np.float64)
        denominator = a.sum(axis=1) + err
        with np.errstate(divide="ignore", invalid="ignore"):
            error_share = np.where(denominator > 0, err / denominator, np.nan)
        rows.append((protein, layer, n, _nanmean(ginis), float(ginis.std(ddof=1)) if n >= 2 else float("nan"),
                     _nanmean(shares), _nanmedian(result.completeness_error), _nanmean(error_share)))
    return _frame(rows, CONCENTRATION_COLUMNS, layer="int64", n_mutants="int64")


def feature_consistency(results_at_layer: Mapping[str, Mapping[str, np.ndarray]], n: int = TOP_N) -> pd.DataFrame:
    """In how many of each protein's mutants' top-n a feature appears, at one layer.

    One row per (protein, feature) with ``n_top ≥ 1``; ``fraction = n_top / n_mutants``. Rows are
    ordered by protein (input order), ``n_top`` descending, then feature ascending. A protein
    without mutants has no rows.
    """
    _check_n(n)
    parts = []
    for protein, result in results_at_layer.items():
        result = checked(protein, None, result)
        n_mutants = result.n
        tops = top_n_features(result.attribution, n)
        if not n_mutants or not any(t.size for t in tops):
            continue
        features, counts = np.unique(np.concatenate(tops), return_counts=True)
        order = np.lexsort((features, -counts))
        parts.append(pd.DataFrame({
            "protein": np.full(features.size, protein, dtype=object),
            "feature": features[order].astype(np.int64),
            "n_top": counts[order].astype(np.int64),
            "n_mutants": np.full(features.size, n_mutants, dtype=np.int64),
            "fraction": counts[order] / n_mutants,
        }))
    if not parts:
        return _frame([], CONSISTENCY_COLUMNS, feature="int64", n_top="int64", n_mutants="int64")
    return pd.concat(parts, ignore_index=True)


def universal_features(results: Results, n: int = TOP_N) -> pd.DataFrame:
    """Features in the top-n of at least half the mutants (``2·n_top ≥ n_mutants``) of at least two proteins.

    Per layer. Columns ``feature, layer, proteins`` (the proteins meeting the bar, ";"-joined in
    input order), then ``freq_<protein>`` for every protein among the keys: the fraction of that
    protein's mutants at that layer with the feature in their top-n (0.0 if none, NaN when the
    protein has no mutants or no results at that layer). Rows are ordered by layer, number of
    proteins descending, then feature.
    """
    _check_n(n)
    entries = ordered_results(results)
    proteins = list(dict.fromkeys(protein for protein, _, _ in entries))
    freq = [f"freq_{protein}" for protein in proteins]
    columns = ["feature", "layer", "proteins", *freq]
    rows = []
    for layer in sorted({layer for _, layer, _ in entries}):
        at_layer = {protein: result for protein, result_layer, result in entries if result_layer == layer}
        table = feature_consistency(at_layer, n)
        n_mutants = {protein: checked(protein, layer, result).n for protein, result in at_layer.items()}
        met = table.loc[2 * table["n_top"] >= table["n_mutants"]]
        for feature, group in met.groupby("feature", sort=True):
            if len(group) < 2:
                continue
            hits = set(group["protein"])
            values = []
            for protein in proteins:
                if not n_mutants.get(protein):
                    values.append(float("nan"))
                    continue
                match = table.loc[(table["protein"] == protein) & (table["feature"] == feature), "fraction"]
                values.append(float(match.iloc[0]) if len(match) else 0.0)
            rows.append((int(feature), layer, ";".join(p for p in proteins if p in hits), len(hits), *values))
    frame = pd.DataFrame.from_records(rows, columns=["feature", "layer", "proteins", "_n", *freq])
    frame = frame.sort_values(["layer", "_n", "feature"], ascending=[True, False, True], kind="mergesort")
    frame = frame.drop(columns="_n").reset_index(drop=True)
    frame[["feature", "layer"]] = frame[["feature", "layer"]].astype("int64")
    frame["proteins"] = frame["proteins"].astype(object)
    for column in freq:
        frame[column] = frame[column].astype(np.float64)
    return frame[columns]


def circuit_sizes(sizes: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """The circuit-size tables one after another, typed: ``minimal_k`` is ``Int64`` (<NA>: none within max_k)."""
    parts = []
    for i, table in enumerate(sizes):
        where = _size_where(i, table)
        missing = [c for c in SIZE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"circuit sizes {where}: missing columns {missing}")
        try:
            minimal_k = pd.array(table["minimal_k"], dtype="Int64")
        except (TypeError, ValueError) as error:
            raise ValueError(f"circuit sizes {where}: minimal_k is not integer or empty ({error})") from None
        if (minimal_k < 0).any():
            raise ValueError(f"circuit sizes {where}: negative minimal_k")
        parts.append(pd.DataFrame({
            "protein": table["protein"].astype(str).to_numpy(dtype=object),
            "layer": table["layer"].to_numpy(dtype=np.int64),
            "mutant": table["mutant"].astype(str).to_numpy(dtype=object),
            "total_effect": table["total_effect"].to_numpy(dtype=np.float64),
            "minimal_k": minimal_k,
        }))
    if not parts:
        frame = _frame([], SIZE_COLUMNS, layer="int64", total_effect="float64")
        frame["minimal_k"] = frame["minimal_k"].astype("Int64")
        return frame
    return pd.concat(parts, ignore_index=True)


def ordered_results(results: Results) -> list[tuple[str, int, Attributions]]:
    """``(protein, layer, result)`` in output order (proteins by first appearance, layers ascending), each checked."""
    proteins = list(dict.fromkeys(protein for protein, _ in results))
    rank = {protein: i for i, protein in enumerate(proteins)}
    return [(protein, int(layer), checked(protein, int(layer), results[(protein, layer)]))
            for protein, layer in sorted(results, key=lambda key: (rank[key[0]], int(key[1])))]


def checked(protein: str, layer: int | None, result: Result) -> Attributions:
    """The result as :class:`~esmsae.arrays.Attributions` (arrays checked: shapes, finiteness).

    With `layer` given, the result's own ``layer`` (if any) must agree with it; with None
    the result's own ``layer`` names it in errors.
    """
    if isinstance(result, Attributions):
        own = result.layer
    else:
        own = int(np.asarray(result["layer"])) if "layer" in result else None
    named = layer if layer is not None else own
    where = f"IG results ({protein!r}, layer {'?' if named is None else named})"
    if not isinstance(result, Attributions):
        result = Attributions.of(result, where)
    if own is not None and layer is not None and own != int(layer):
        raise ValueError(f"{where}: file says layer {own}")
    return result


def _size_where(i: int, table: pd.DataFrame) -> str:
    if len(table) and "protein" in table.columns and "layer" in table.columns:
        return f"({table['protein'].iloc[0]!r}, layer {table['layer'].iloc[0]})"
    return f"#{i}"


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _nanmedian(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def _frame(rows: list[tuple], columns: list[str], **dtypes: str) -> pd.DataFrame:
    """A frame with the given columns (also when empty), ``dtypes`` applied."""
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for name, dtype in dtypes.items():
        frame[name] = frame[name].astype(dtype)
    return frame
