"""Rule tabulate_agreement: how well cheap attributions (AtP, IG) stand in for exact patching.

METHOD.md "Attribution agreement": for every mutant at every layer with both exact patching and
IG, over the changed set (the features the patching table patched for real), Spearman ρ of the
exact single-feature effects against AtP's and against IG's attributions, and the top-10 overlap
``|top10(exact) ∩ top10(method)| / min(10, |C|)``, tops by absolute value, beside its chance level
``min(10, |C|) / |C|`` (two random top-10s of the changed set; ρ's is 0). Summaries treat the
mutant as the unit (mean ± s.e.m. over mutants). Nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.analyses.arrays import Attributions
from esmsae.pipeline.columns import TABLES, first_settings, one_forward
from esmsae.pipeline.io import write_csv
from esmsae.tables.patching import read_patching
from esmsae.tables.statistics import mean_sem, spearman

TOP = 10


def top_overlap(exact: np.ndarray, estimate: np.ndarray, n: int = TOP) -> float:
    """``|top-n(|exact|) ∩ top-n(|estimate|)| / min(n, len)`` (ties to the earlier entry); NaN when empty.

    ``exact = [5, -4, 3, 0.1]``, ``estimate = [0.2, 4, -3, 5]``, n = 2: tops {0, 1} and {3, 1}: 1/2.
    """
    exact, estimate = np.abs(np.asarray(exact, dtype=np.float64)), np.abs(np.asarray(estimate, dtype=np.float64))
    if exact.size == 0:
        return float("nan")
    top = min(n, exact.size)
    a = set(np.argsort(-exact, kind="stable")[:top].tolist())
    b = set(np.argsort(-estimate, kind="stable")[:top].tolist())
    return len(a & b) / top


def mutant_agreement(features: np.ndarray, exact: np.ndarray, atp: np.ndarray, ig: np.ndarray) -> dict:
    """One mutant: exact effects of `features` (its changed set) against AtP and IG (full d_sae rows)."""
    features = np.asarray(features, dtype=np.int64)
    a, g = np.asarray(atp)[features], np.asarray(ig)[features]
    n = int(features.size)
    return {"n_changed": n, "spearman_atp": spearman(exact, a)[0],
            "spearman_ig": spearman(exact, g)[0], "top10_atp": top_overlap(exact, a), "top10_ig": top_overlap(exact, g),
            "top10_chance": min(TOP, n) / n if n else float("nan")}


def agreement_by_mutant(patching: Mapping[tuple[str, int], pd.DataFrame],
                        ig: Mapping[tuple[str, int], Attributions],
                        atp: Mapping[tuple[str, int], Attributions]) -> pd.DataFrame:
    """:func:`mutant_agreement` for every mutant of every (protein, layer) present in all three inputs."""
    rows = []
    for key in atp:
        protein, layer = key
        table = patching[key]
        real = table[table["control"] == "real"]
        ig_rows = {name: i for i, name in enumerate(ig[key].mutant.tolist())}
        one_forward([*table["activations"], ig[key].activations, atp[key].activations],
                    f"agreement ({protein!r}, layer {layer})")
        for m, name in enumerate(atp[key].mutant.tolist()):
            if name not in ig_rows:
                raise ValueError(f"IG results ({protein!r}, layer {layer}) lack mutant {name}")
            patches = real[real["mutant"] == name].sort_values("feature", kind="mergesort")
            stats = mutant_agreement(patches["feature"].to_numpy(), patches["effect"].to_numpy(dtype=np.float64),
                                     atp[key].attribution[m], ig[key].attribution[ig_rows[name]])
            rows.append({"protein": protein, "layer": int(layer), "mutant": name, **stats,
                         "atp_linear_error": float(atp[key].completeness_error[m]),
                         **atp[key].sae_settings})
    return pd.DataFrame(rows, columns=TABLES["agreement_mutants"])


def agreement_summary(by_mutant: pd.DataFrame) -> pd.DataFrame:
    """Per protein × layer: mean ± s.e.m. over mutants of each agreement statistic."""
    rows = []
    for (protein, layer), part in by_mutant.groupby(["protein", "layer"], sort=False):
        row = {"protein": protein, "layer": int(layer), "n_mutants": len(part)}
        for stat in ("spearman_atp", "spearman_ig", "top10_atp", "top10_ig"):
            row[f"{stat}_mean"], row[f"{stat}_sem"] = mean_sem(part[stat].to_numpy(dtype=np.float64))
        row["top10_chance_mean"] = mean_sem(part["top10_chance"].to_numpy(dtype=np.float64))[0]
        row["atp_linear_error_median"] = float(np.nanmedian(part["atp_linear_error"])) if len(part) else np.nan
        rows.append(row | first_settings(part))
    return pd.DataFrame(rows, columns=TABLES["attribution_agreement"])


log = logging.getLogger("esmsae")


# -- attribution agreement and spread over positions ---------------------------------------------
def tabulate_agreement(patching: Mapping[tuple[str, int], Path], ig: Mapping[tuple[str, int], Path],
                       atp: Mapping[tuple[str, int], Path], out: Mapping[str, Path]) -> None:
    """Rule tabulate_agreement: exact patching against AtP and IG, per mutant and per protein × layer."""
    by_mutant = agreement_by_mutant({key: read_patching(patching[key]) for key in atp},
                                               {key: Attributions.read(ig[key]) for key in atp},
                                              {key: Attributions.read(path) for key, path in atp.items()})
    summary = agreement_summary(by_mutant)
    log.info("agreement with exact patching over %d mutants:\n%s", len(by_mutant),
             summary[["protein", "layer", "spearman_atp_mean", "spearman_ig_mean", "top10_atp_mean",
                      "top10_ig_mean"]].to_string(index=False))
    write_csv(by_mutant, out["mutants"])
    write_csv(summary, out["table"])
