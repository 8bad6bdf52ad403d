"""Rule tabulate_findings: each headline claim as a statistic beside its null, with a verdict that can fail.

METHOD.md "Findings (verdicts that can fail)". The mutant is the unit; a claim is
``supported`` when its one-sided test (paired Wilcoxon p, or an empirical p against a drawn null) is
below ``alpha`` in the claimed direction, ``not supported`` when it is significant the other way, and
``indistinguishable from null`` otherwise. Per protein, and pooled over every protein's mutants:

1. ``peak_layer`` — ℓ* = the patching layer with the largest mean |real effect| (each mutant's mean over
   its real patches); supported only if, paired over mutants, ℓ* exceeds the next-largest layer and, at
   ℓ*, real exceeds the ``random`` control (both one-sided; p is the larger of the two).
2. ``top20_share`` — the top-20 share of D (mean over the IG layers, per mutant) vs its null, the same
   share of |Δ| (what the SAE's sparsity alone gives).
3. ``single_feature_effects`` — each mutant's largest |real effect| vs its largest |random| (mean over the
   patching layers).
4. ``universal_features`` — the number of universal features (over the IG layers) vs the same count when
   each mutant's top-20 is drawn at random from its changed set (``n_null`` draws, seeded); pooled only.
5. ``mediated_fraction`` — each mutant's mediated fraction vs its random hold (mean over layer pairs).
6. ``set_ablation:<set>`` — the set's Δρ with DMS (without DMS: ρ(clean, ablated)), mean over layers, vs
   its frequency-matched nulls; p is the smallest layer's empirical p times the number of layers
   (Bonferroni), and "the other way" a layer above its nulls' 95th percentile.

Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from esmsae.analyses.arrays import Attributions
from esmsae.config.settings import required_proteins
from esmsae.pipeline.columns import TABLES, one_forward, read_table
from esmsae.pipeline.io import write_csv
from esmsae.tables.graph import mediated_fractions
from esmsae.tables.ig import TOP_N, top_n_features
from esmsae.tables.patching import read_patching, real_patches

log = logging.getLogger(__name__)

SUPPORTED, NOT_SUPPORTED, NULL = "supported", "not supported", "indistinguishable from null"
ALL = "all"
FIGURE = {"peak_layer": "layer_effects.png", "top20_share": "ig_concentration.png",
          "single_feature_effects": "controls.png", "universal_features": "universal_features.png",
          "mediated_fraction": "mediated_fraction.png", "set_ablation": "set_ablation.png"}


def verdict(p: float, p_other: float, alpha: float = 0.05) -> str:
    """``supported`` if p < alpha in the claimed direction, ``not supported`` if significant the other way."""
    if np.isfinite(p) and p < alpha:
        return SUPPORTED
    if np.isfinite(p_other) and p_other < alpha:
        return NOT_SUPPORTED
    return NULL


def paired_greater(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """One-sided paired Wilcoxon p of x > y and of x < y over the pairs where both are finite; NaN below 2
    pairs or when every difference is 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    if d.size < 2 or not np.any(d != 0):
        return float("nan"), float("nan"), int(d.size)
    return (float(stats.wilcoxon(d, alternative="greater").pvalue),
            float(stats.wilcoxon(d, alternative="less").pvalue), int(d.size))


def empirical(value: float, null: np.ndarray) -> tuple[float, float]:
    """One-sided empirical p of value above the null, ``(1 + #{null ≥ v}) / (1 + n)``, and of value below it."""
    null = np.asarray(null, dtype=np.float64)
    if not np.isfinite(value) or not len(null):
        return float("nan"), float("nan")
    return float((1 + np.sum(null >= value)) / (1 + len(null))), float((1 + np.sum(null <= value)) / (1 + len(null)))


def row(claim: str, scope: str, statistic: float, null: float, test: str, p: float, p_other: float, n: int,
        sentence: str, alpha: float, figure: str | None = None) -> dict:
    outcome = verdict(p, p_other, alpha)
    return {"claim": claim, "scope": scope, "statistic": statistic, "null": null, "test": test, "p": p,
            "p_other": p_other, "n": n, "verdict": outcome,
            "sentence": sentence + (f" (p = {p:.2g})" if np.isfinite(p) else " (p undefined)"),
            "figure": figure or FIGURE[claim.split(":")[0]]}


# -- per-mutant values from the tables -------------------------------------------------------------------------------
def patch_values(tables: Mapping[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Per (protein, layer, mutant): mean and max |effect| of its real patches and of its random control."""
    parts = []
    for (protein, layer), table in tables.items():
        table = table.assign(abs_effect=table["effect"].abs())
        for control, name in (("real", "real"), ("random", "random")):
            part = table[table["control"] == control] if control != "real" else real_patches(table)
            agg = part.groupby("mutant")["abs_effect"].agg(["mean", "max"])
            agg.columns = [f"{name}_mean", f"{name}_max"]
            parts.append(agg.assign(protein=protein, layer=int(layer)).reset_index())
    if not parts:
        return pd.DataFrame(columns=["protein", "layer", "mutant", "real_mean", "real_max", "random_mean",
                                     "random_max"])
    merged = pd.concat(parts).groupby(["protein", "layer", "mutant"], sort=False).first().reset_index()
    return merged


def peak_layer(values: pd.DataFrame, scope: str, alpha: float) -> dict:
    """Claim 1 over the mutants of `values` (one protein, or all: mutants are (protein, mutant) pairs)."""
    wide = values.pivot_table(index=["protein", "mutant"], columns="layer", values="real_mean")
    means = wide.mean()
    if len(means) < 2:
        return row("peak_layer", scope, np.nan, np.nan, "Wilcoxon (paired, one-sided)", np.nan, np.nan, 0,
                   f"{scope}: peak causal effects at one layer (fewer than two patching layers)", alpha)
    order = means.sort_values(ascending=False, kind="mergesort")
    best, second = int(order.index[0]), int(order.index[1])
    p_layer, p_layer_other, n = paired_greater(wide[best].to_numpy(), wide[second].to_numpy())
    at = values[values["layer"] == best]
    p_random, p_random_other, _ = paired_greater(at["real_mean"].to_numpy(), at["random_mean"].to_numpy())
    p = max(p_layer, p_random) if np.isfinite(p_layer) and np.isfinite(p_random) else np.nan
    p_other = min(x for x in (p_layer_other, p_random_other) if np.isfinite(x)) if any(
        np.isfinite(x) for x in (p_layer_other, p_random_other)) else np.nan
    sentence = (f"{scope}: peak causal effects at layer {best} (mean |effect| {order.iloc[0]:.3g} vs "
                f"{order.iloc[1]:.3g} at layer {second}, random control {at['random_mean'].mean():.3g})")
    return row("peak_layer", scope, float(order.iloc[0]), float(max(order.iloc[1], at["random_mean"].mean())),
               "Wilcoxon (paired, one-sided): l* > next layer and real > random at l*", p, p_other, n, sentence,
               alpha)


def mutant_means(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Each (protein, mutant)'s mean over layers of `columns`."""
    return frame.groupby(["protein", "mutant"], sort=False)[columns].mean().reset_index()


def paired_claim(claim: str, scope: str, values: pd.DataFrame, x: str, y: str, what: str, alpha: float) -> dict:
    p, p_other, n = paired_greater(values[x].to_numpy(), values[y].to_numpy())
    mean_x, mean_y = float(values[x].mean()), float(values[y].mean())
    return row(claim, scope, mean_x, mean_y, "Wilcoxon (paired, one-sided)", p, p_other, n,
               f"{scope}: {what} ({mean_x:.3g} vs {mean_y:.3g} over {n} mutants)", alpha)


# -- universal features against random top-20s -----------------------------------------------------------------------
def universal_count(tops: Mapping[tuple[str, int], list[set[int]]], min_proteins: int | float = 2) -> int:
    """How many (layer, feature) are in the top set of at least half the mutants (2·n_top ≥ n) of at least
    `min_proteins` proteins (a count, or a fraction of the proteins with results at the layer)."""
    layers: dict[int, dict[int, int]] = {}
    n_proteins: dict[int, int] = {}
    for (_protein, layer), sets in tops.items():  # one key per protein and layer
        n_proteins[int(layer)] = n_proteins.get(int(layer), 0) + 1
        if not sets:
            continue
        counts: dict[int, int] = {}
        for s in sets:
            for f in s:
                counts[f] = counts.get(f, 0) + 1
        for f, c in counts.items():
            if 2 * c >= len(sets):
                layers.setdefault(int(layer), {}).setdefault(f, 0)
                layers[int(layer)][f] += 1
    return sum(1 for layer, per in layers.items() for proteins in per.values()
               if proteins >= required_proteins(min_proteins, n_proteins[layer]))


def universal_claim(results: Mapping[tuple[str, int], Attributions], n_null: int, seed: int, alpha: float,
                    min_proteins: int | float = 2) -> dict:
    """Claim 4: the observed universal count vs `n_null` counts with each mutant's top-20 drawn at random
    from its changed set (as many as its own top-20 holds, at most 20), seeded."""
    tops = {key: [set(row_.tolist()) for row_ in top_n_features(r.attribution)] for key, r in results.items()}
    observed = universal_count(tops, min_proteins)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_null):
        drawn = {}
        for key, r in results.items():
            sets = []
            for m in range(r.n):
                changed = np.flatnonzero(np.asarray(r.abs_delta[m]) > 0)
                size = min(len(tops[key][m]), TOP_N, len(changed))
                sets.append(set(rng.choice(changed, size=size, replace=False).tolist()) if size else set())
            drawn[key] = sets
        null.append(universal_count(drawn, min_proteins))
    p, p_other = empirical(float(observed), np.array(null, dtype=np.float64))
    mean = float(np.mean(null)) if null else float("nan")
    return row("universal_features", ALL, float(observed), mean, f"empirical, {n_null} random top-20 draws", p,
               p_other, sum(r.n for r in results.values()),
               f"{ALL}: universal features across proteins ({observed} vs {mean:.3g} with random top-20s)", alpha)


# -- feature-set ablation --------------------------------------------------------------------------------------------
def ablation_claims(table: pd.DataFrame, alpha: float) -> list[dict]:
    """Claim 6 per set, per protein and pooled: Bonferroni over the layers' empirical p."""
    out = []
    for name, by_set in table.groupby("set", sort=False):
        for scope, part in [*by_set.groupby("protein", sort=False), (ALL, by_set)]:
            with_dms = bool((part["n_dms"] >= 3).all())
            column, p_column = ("delta_rho", "p_delta_rho") if with_dms else ("rho_clean_ablated",
                                                                             "p_rho_clean_ablated")
            ps = part[p_column].to_numpy(dtype=np.float64)
            p = float(min(1.0, np.nanmin(ps) * len(ps))) if np.isfinite(ps).any() else float("nan")
            above = bool((part[column] > part[f"null_{column}_p95"]).any())
            what = "Δρ with DMS" if with_dms else "ρ(clean, ablated)"
            value, null = float(part[column].mean()), float(part[f"null_{column}_mean"].mean())
            out.append(row(f"set_ablation:{name}", str(scope), value, null,
                           "empirical vs frequency-matched sets, Bonferroni over layers", p,
                           0.0 if above else float("nan"), len(part),
                           f"{scope}: removing the {name} set (|A| {int(part['size'].median())}) changes {what} "
                           f"by more than comparable random sets ({value:.3g} vs {null:.3g}, {len(part)} layers)",
                           alpha))
    return out


def findings(patching: Mapping[tuple[str, int], pd.DataFrame], concentration: pd.DataFrame,
             results: Mapping[tuple[str, int], Attributions], shares: Mapping[tuple[str, int], pd.DataFrame],
             ablation: pd.DataFrame | None, n_null: int, seed: int, alpha: float,
             min_proteins: int | float = 2) -> pd.DataFrame:
    """Every claim's row (``TABLES["findings"]``), each with the one forward its inputs were measured on."""
    rows = []
    values = patch_values(patching)
    proteins = list(dict.fromkeys(p for p, _ in patching))
    scopes: list[tuple[str, Iterable[str]]] = [(p, [p]) for p in proteins] + [(ALL, proteins)]
    conc = concentration.assign(protein=concentration["protein"].astype(str))
    fractions = pd.concat([mediated_fractions(table).assign(protein=protein) for (protein, _), table in shares.items()],
                          ignore_index=True) if shares else pd.DataFrame(columns=["protein", "mutant",
                                                                                  "mediated_fraction",
                                                                                  "null_fraction"])
    for scope, members in scopes:
        mine = values[values["protein"].isin(members)]
        if len(mine):
            rows.append(peak_layer(mine, scope, alpha))
            rows.append(paired_claim("single_feature_effects", scope, mutant_means(mine, ["real_max", "random_max"]),
                                     "real_max", "random_max", "single features move the score more than random "
                                                               "perturbations of their size (largest |effect|)",
                                     alpha))
        part = conc[conc["protein"].isin(members)]
        if len(part):
            rows.append(paired_claim("top20_share", scope, mutant_means(part, ["top20_share", "top20_share_null"]),
                                     "top20_share", "top20_share_null",
                                     "the top 20 features carry more of the IG attribution than the SAE's sparsity "
                                     "alone gives (top-20 share of D)", alpha))
        part = fractions[fractions["protein"].isin(members)]
        if len(part):
            rows.append(paired_claim("mediated_fraction", scope,
                                     mutant_means(part, ["mediated_fraction", "null_fraction"]), "mediated_fraction",
                                     "null_fraction", "an upstream feature's effect flows through its top downstream "
                                                      "features more than through random ones", alpha))
    if results:
        rows.append(universal_claim(results, n_null, seed, alpha, min_proteins))
    if ablation is not None and len(ablation):
        rows += ablation_claims(ablation, alpha)
    forward = one_forward(itertools.chain(
        *(table["activations"] for table in patching.values()), concentration["activations"],
        (r.activations for r in results.values()), *(table["activations"] for table in shares.values()),
        ablation["activations"] if ablation is not None else ()), "findings")
    return pd.DataFrame(rows, columns=TABLES["findings"]).assign(activations=forward)


def tabulate_findings(patching: Mapping[tuple[str, int], Path], concentration: str | Path,
                      ig: Mapping[tuple[str, int], Path], shares: Mapping[tuple[str, int], Path],
                      ablation: str | Path | None, n_null: int, seed: int, alpha: float, out: str | Path,
                      min_proteins: int | float = 2) -> None:
    """Rule tabulate_findings: ``tables/findings.csv``."""
    table = findings({key: read_patching(path) for key, path in patching.items()},
                     read_table(concentration, "ig_concentration_mutants"),
                     {key: Attributions.read(path) for key, path in ig.items()},
                     {key: read_table(path, "graph_shares") for key, path in shares.items()},
                     read_table(ablation, "set_ablation") if ablation else None, n_null, seed, alpha, min_proteins)
    for r in table.itertuples():
        log.info("%s", r.sentence)
    write_csv(table, out)

