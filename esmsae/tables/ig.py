"""Rules tabulate_attributions and tabulate_top_features: concentration, consistency and
universality of IG attributions, and each mutant's top features.

METHOD.md "Concentration and universality". The inputs are the IG results per (protein, layer),
each an :class:`esmsae.analyses.arrays.Attributions` (or a dict of the same arrays, checked into
one: ``mutant``, ``attribution`` of shape ``(n, d_sae)``, ``error_attribution``,
``total_effect``, ``completeness_error``; ``n`` may be 0).

Proteins keep the order of their first appearance among the keys; layers are ascending. A
mutant's top-n features are the n largest ``|A_j|`` with ties going to the lower feature index
(a stable sort on ``-|A|``); a feature with ``A_j = 0`` is never in a top-n. Outputs have a
fixed row order, so their CSVs are byte-identical across runs.

Pure numpy/pandas: nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.analyses.arrays import Attributions
from esmsae.config.settings import required_proteins
from esmsae.pipeline.columns import (
    CONCENTRATION_COLUMNS,
    CONCENTRATION_MUTANT_COLUMNS,
    CONSISTENCY_COLUMNS,
    SAE_SETTINGS,
    TABLES,
    one_forward,
    read_table,
    typed_frame,
)
from esmsae.pipeline.io import write_csv
from esmsae.tables.labels import Labels, label_lookup, labels_by_feature
from esmsae.tables.statistics import gini, k90, mean_sem, top_share, wilcoxon_p

TOP_N = 20


Result = Attributions | Mapping[str, np.ndarray]


Results = Mapping[tuple[str, int], Result]


def top_n_features(attribution: np.ndarray, n: int = TOP_N) -> list[np.ndarray]:
    """Each row's top-n feature indices by ``|A|`` (ties: lower index first), leaving out ``A_j = 0``."""
    _check_n(n)
    a = np.abs(np.asarray(attribution, dtype=np.float64))
    order = np.argsort(-a, axis=1, kind="stable")[:, :n]
    return [row[a[m, row] > 0] for m, row in enumerate(order)]


def mutant_concentration(attribution: np.ndarray, error: float, abs_delta: np.ndarray, n: int = TOP_N) -> dict:
    """One mutant's concentration statistics beside their null (METHOD.md "Concentration and universality").

    Over the changed set ``C`` (``abs_delta > 0``: the features the path moves), with the error
    node in the denominator ``D = Σ_C |A_j| + |A_err|``: ``top20_share = Σ top-n |A_j| / D``,
    ``error_share = |A_err| / D``, ``k90`` (fewest features reaching 0.9 · ``Σ_C |A_j|``) and
    ``gini`` of ``|A_j|`` over ``C``. The null puts ``|Δ|`` (``abs_delta``) in place of
    ``|A_j|``, without an error node: what the SAE's sparsity alone gives. Worked example:
    ``|A| = [4, 3, 2, 1]``, ``A_err = 10``, ``|Δ| = [1, 1, 1, 1]``: ``D = 20``, top-20 share
    0.5, error share 0.5, k90 3, Gini 0.25; null: share 1, k90 4, Gini 0.
    """
    _check_n(n)
    a = np.abs(np.asarray(attribution, dtype=np.float64))
    w = np.abs(np.asarray(abs_delta, dtype=np.float64))
    changed = w > 0
    a_c, w_c = a[changed], w[changed]
    err = abs(float(error))
    denominator = a_c.sum() + err
    nan = float("nan")
    return {
        "n_changed": int(changed.sum()),
        "top20_share": float(np.sort(a_c)[::-1][:n].sum() / denominator) if denominator > 0 else nan,
        "top20_share_null": top_share(w_c, n) if w_c.size else nan,
        "error_share": err / denominator if denominator > 0 else nan,
        "k90": k90(a_c) if a_c.size else nan,
        "k90_null": k90(w_c) if w_c.size else nan,
        "gini": gini(a_c),
        "gini_null": gini(w_c),
    }


MUTANT_STATS = ("n_changed", "top20_share", "top20_share_null", "error_share", "k90", "k90_null", "gini",
                "gini_null")


def concentration_by_mutant(results: Results, n: int = TOP_N) -> pd.DataFrame:
    """:func:`mutant_concentration` of every mutant, with its completeness error and the settings."""
    rows = []
    for protein, layer, result in ordered_results(results):
        for m in range(result.n):
            stats = mutant_concentration(result.attribution[m], result.error_attribution[m], result.abs_delta[m], n)
            rows.append({"protein": protein, "layer": layer, "mutant": str(result.mutant[m]), **stats,
                         "total_effect": float(result.total_effect[m]),
                         "completeness_error": float(result.completeness_error[m]), **result.sae_settings})
    frame = pd.DataFrame(rows, columns=CONCENTRATION_MUTANT_COLUMNS)
    return frame.astype({"layer": "int64", "n_changed": "int64"})


def ig_concentration(results: Results, n: int = TOP_N) -> pd.DataFrame:
    """Concentration per (protein, layer), each statistic beside its null, the mutant as the unit.

    For each statistic of :func:`mutant_concentration`: the mean over mutants and its standard
    error (``std(ddof=1)/√n``, NaN below 2 mutants; NaN values skipped). ``gini_above_null`` is the
    fraction of mutants whose attribution is more concentrated than their own ``|Δ|``
    (``gini > gini_null``), and ``gini_wilcoxon_p`` the two-sided Wilcoxon signed-rank p of the
    paired differences (NaN below 2 mutants or when all differences are 0).
    """
    by_mutant = concentration_by_mutant(results, n)
    rows = []
    for protein, layer, result in ordered_results(results):
        part = by_mutant[(by_mutant["protein"] == protein) & (by_mutant["layer"] == layer)]
        row = {"protein": protein, "layer": layer, "n_mutants": result.n}
        for stat in MUTANT_STATS:
            row[f"{stat}_mean"], row[f"{stat}_sem"] = mean_sem(part[stat].to_numpy(dtype=np.float64))
        diff = (part["gini"] - part["gini_null"]).to_numpy(dtype=np.float64)
        diff = diff[np.isfinite(diff)]
        row["gini_above_null"] = float((diff > 0).mean()) if diff.size else float("nan")
        row["gini_wilcoxon_p"] = wilcoxon_p(diff)
        row["median_completeness_error"] = _nanmedian(result.completeness_error)
        rows.append({**row, **result.sae_settings})
    return pd.DataFrame(rows, columns=CONCENTRATION_COLUMNS).astype({"layer": "int64", "n_mutants": "int64"})


def feature_consistency(results_at_layer: Mapping[str, Mapping[str, np.ndarray]], n: int = TOP_N,
                        labels: Labels | None = None) -> pd.DataFrame:
    """In how many of each protein's mutants' top-n a feature appears, at one layer.

    One row per (protein, feature) with ``n_top ≥ 1``; ``fraction = n_top / n_mutants``. Rows are
    ordered by protein (input order), ``n_top`` descending, then feature ascending. A protein
    without mutants has no rows. ``label`` comes from `labels` (``{(layer, feature): label}``).
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
            "label": [(labels or {}).get((result.layer, int(f)), "") for f in features[order]],
            "n_top": counts[order].astype(np.int64),
            "n_mutants": np.full(features.size, n_mutants, dtype=np.int64),
            "fraction": counts[order] / n_mutants,
            "layer": result.layer,
            **result.sae_settings,
        }, columns=CONSISTENCY_COLUMNS))
    if not parts:
        return typed_frame([], CONSISTENCY_COLUMNS, feature="int64", n_top="int64", n_mutants="int64")
    return pd.concat(parts, ignore_index=True)


def universal_features(results: Results, n: int = TOP_N, labels: Labels | None = None,
                       min_proteins: int | float = 2) -> pd.DataFrame:
    """Features in the top-n of at least half the mutants (``2·n_top ≥ n_mutants``) of at least `min_proteins`
    proteins (``universal.min_proteins``: a count, or a fraction of the proteins with results at the layer,
    :func:`~esmsae.config.settings.required_proteins`).

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
    columns = ["feature", "label", "layer", "proteins", *freq, *SAE_SETTINGS]
    rows = []
    for layer in sorted({layer for _, layer, _ in entries}):
        at_layer = {protein: result for protein, result_layer, result in entries if result_layer == layer}
        settings = next(iter(at_layer.values())).sae_settings
        one_forward((r.activations for r in at_layer.values()), f"universal features at layer {layer}")
        table = feature_consistency(at_layer, n)
        n_mutants = {protein: checked(protein, layer, result).n for protein, result in at_layer.items()}
        met = table.loc[2 * table["n_top"] >= table["n_mutants"]]
        bar = required_proteins(min_proteins, len(at_layer))
        for feature, group in met.groupby("feature", sort=True):
            if len(group) < bar:
                continue
            hits = set(group["protein"])
            values = []
            for protein in proteins:
                if not n_mutants.get(protein):
                    values.append(float("nan"))
                    continue
                match = table.loc[(table["protein"] == protein) & (table["feature"] == feature), "fraction"]
                values.append(float(match.iloc[0]) if len(match) else 0.0)
            rows.append((int(feature), layer, ";".join(p for p in proteins if p in hits), len(hits), *values,
                         *settings.values()))
    frame = pd.DataFrame.from_records(rows, columns=["feature", "layer", "proteins", "_n", *freq, *SAE_SETTINGS])
    frame = frame.sort_values(["layer", "_n", "feature"], ascending=[True, False, True], kind="mergesort")
    frame = frame.drop(columns="_n").reset_index(drop=True)
    frame[["feature", "layer"]] = frame[["feature", "layer"]].astype("int64")
    frame["proteins"] = frame["proteins"].astype(object)
    frame["label"] = pd.Series([(labels or {}).get((int(lay), int(f)), "") for lay, f in
                                zip(frame["layer"], frame["feature"], strict=True)], index=frame.index, dtype=object)
    for column in freq:
        frame[column] = frame[column].astype(np.float64)
    return frame[columns]


def ordered_results(results: Results) -> list[tuple[str, int, Attributions]]:
    """``(protein, layer, result)`` in output order (proteins by first appearance, layers ascending), each checked."""
    proteins = list(dict.fromkeys(protein for protein, _ in results))
    rank = {protein: i for i, protein in enumerate(proteins)}
    return [(protein, int(layer), checked(protein, int(layer), results[(protein, layer)]))
            for protein, layer in sorted(results, key=lambda key: (rank[key[0]], int(key[1])))]


def checked(protein: str, layer: int | None, result: Result) -> Attributions:
    """The result as :class:`~esmsae.analyses.arrays.Attributions` (arrays checked: shapes, finiteness).

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


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def _nanmedian(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


log = logging.getLogger("esmsae")


def tabulate_attributions(ig: Mapping[tuple[str, int], Path], labels_table: str | Path, out: Mapping[str, Path],
                          consistency: Mapping[int, Path], min_proteins: int | float = 2) -> None:
    """Rule tabulate_attributions: concentration, feature consistency per layer and universal features."""
    results = {pair: Attributions.read(path) for pair, path in ig.items()}
    names = label_lookup(read_table(labels_table, "feature_labels"))
    write_csv(ig_concentration(results), out["concentration"])
    write_csv(concentration_by_mutant(results), out["concentration_mutants"])
    write_csv(universal_features(results, labels=names, min_proteins=min_proteins), out["universal"])
    for layer, path in consistency.items():
        at_layer = {p: r for (p, lay), r in results.items() if lay == layer}
        write_csv(feature_consistency(at_layer, labels=names), path)


def tabulate_top_features(npz: str | Path, labels_table: str | Path, out: str | Path) -> None:
    """Rule tabulate_top_features: a protein's 20 largest |A_j| per mutant at one layer, labelled."""
    result = Attributions.read(npz)
    names = labels_by_feature(read_table(labels_table, "feature_labels"), result.layer)
    rows = []
    for m, mutant in enumerate(result.mutant.tolist()):
        for rank, j in enumerate(top_n_features(result.attribution[m:m + 1])[0], start=1):
            rows.append({"mutant": mutant, "rank": rank, "feature": int(j), "label": names.get(int(j), ""),
                         "attribution": float(result.attribution[m, j]), "abs_delta": float(result.abs_delta[m, j]),
                         "layer": result.layer, **result.sae_settings})
    write_csv(pd.DataFrame(rows, columns=TABLES["ig_top"]), out)
