"""Hand-made IG results and circuit-size tables, shared by the table and figure tests (a helper, not tests).

Every expected number that goes with them is worked out by hand in a comment here (CASES) or in
the test that uses them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from esmsae.pipeline.columns import SIZE_COLUMNS, TABLES

D_SAE = 30
NAN = float("nan")


def result(attribution, layer, error=None, total=None, completeness=None, mutants=None, abs_delta=None, k=8,
           d_sae=None, space="latent", activations="interprot"):
    """An IG result dict shaped like an ``ig/{protein}_L{layer}.npz`` (esmsae.analyses.arrays.Attributions).

    By default every feature with ``A_j ≠ 0`` is in the changed set, with ``|Δ| = 1`` (a flat null).
    """
    attribution = np.asarray(attribution, dtype=np.float64).reshape(-1, np.shape(attribution)[-1])
    n = attribution.shape[0]
    if abs_delta is None:
        abs_delta = (attribution != 0) * 1.0
    return {
        "mutant": np.array(mutants if mutants is not None else [f"A{i + 1}C" for i in range(n)], dtype=str),
        "attribution": attribution,
        "abs_delta": np.asarray(abs_delta, dtype=np.float64).reshape(attribution.shape),
        "error_attribution": np.zeros(n) if error is None else np.asarray(error, dtype=np.float64),
        "total_effect": np.zeros(n) if total is None else np.asarray(total, dtype=np.float64),
        "completeness_error": np.zeros(n) if completeness is None else np.asarray(completeness, dtype=np.float64),
        "steps": np.array(16), "rule": np.array("gausslegendre"), "space": np.array(space), "k": np.array(k),
        "d_sae": np.array(attribution.shape[1] if d_sae is None else d_sae),
        "error_node": np.array(True), "layer": np.array(layer), "activations": np.array(activations),
    }


def planted(layer=6):
    """P, Q (4 mutants each) and R (3 mutants) over 30 features, few nonzero so the top-20 is every nonzero one.

    Feature 7 is in every P and Q mutant's top-20; 11 in all of P's but only 1 of R's 3 (< half);
    3 in 2 of Q's 4 (exactly half) and all of R's; 20+m only in P's mutant m; 25 in Q's mutant 0.
    """
    p = np.zeros((4, D_SAE))
    p[:, 7] = 2.0
    p[:, 11] = -1.5
    for m in range(4):
        p[m, 20 + m] = 0.5 * (m + 1)
    q = np.zeros((4, D_SAE))
    q[:, 7] = -3.0
    q[:2, 3] = 1.0
    q[0, 25] = 0.1
    r = np.zeros((3, D_SAE))
    r[:, 3] = 2.0
    r[0, 11] = 1.0
    return {"P": result(p, layer), "Q": result(q, layer), "R": result(r, layer)}


# Hand-made mutants over 6 features: (attribution, error attribution, |Δ|, expected statistics).
CASES = {
    # C = {0..3}, |A| = 4, 3, 2, 1, A_err = 10: D = 20, top-20 share 10/20, error share 10/20;
    # 0.9 · 10 = 9 = 4 + 3 + 2: k90 3; Gini of [1, 2, 3, 4] = (−3·1 − 1·2 + 1·3 + 3·4)/(4·10) = 0.25.
    # Null |Δ| = 1, 1, 1, 1: share 1, k90 4 (3 < 3.6), Gini 0.
    "four": ([4.0, -3.0, 2.0, -1.0, 0.0, 0.0], 10.0, [1, 1, 1, 1, 0, 0],
             dict(n_changed=4, top20_share=0.5, top20_share_null=1.0, error_share=0.5, k90=3, k90_null=4,
                  gini=0.25, gini_null=0.0)),
    # C = {4, 5}, |A| = 6, 2, A_err = −2: D = 10, share 0.8, error share 0.2; 6 < 7.2 ≤ 8: k90 2;
    # Gini [2, 6] = (−2 + 6)/(2·8) = 0.25. Null [1, 3]: share 1, 3 < 3.6: k90 2, Gini (−1 + 3)/(2·4) = 0.25.
    "two": ([0.0, 0.0, 0.0, 0.0, 6.0, -2.0], -2.0, [0, 0, 0, 0, 1, 3],
            dict(n_changed=2, top20_share=0.8, top20_share_null=1.0, error_share=0.2, k90=2, k90_null=2,
                 gini=0.25, gini_null=0.25)),
    # C = {0, 1, 5}, |A| = 0, 0, 3, no error: D = 3, share 1, error share 0, k90 1, Gini [0, 0, 3] =
    # (−2·0 + 0·0 + 2·3)/(3·3) = 2/3. Null [2, 2, 2]: share 1, k90 3 (4 < 5.4), Gini 0.
    "one": ([0.0, 0.0, 0.0, 0.0, 0.0, 3.0], 0.0, [2, 2, 0, 0, 0, 2],
            dict(n_changed=3, top20_share=1.0, top20_share_null=1.0, error_share=0.0, k90=1, k90_null=3,
                 gini=2 / 3, gini_null=0.0)),
    # Nothing changed and no error: every statistic is undefined.
    "empty": ([0.0] * 6, 0.0, [0] * 6,
              dict(n_changed=0, top20_share=NAN, top20_share_null=NAN, error_share=NAN, k90=NAN, k90_null=NAN,
                   gini=NAN, gini_null=NAN)),
}


def case_result(names, layer, completeness=None, total=None, **settings):
    """An IG result whose mutants are the named CASES, in order."""
    rows = [CASES[name] for name in names]
    return result(np.array([r[0] for r in rows]).reshape(len(rows), 6), layer, error=[r[1] for r in rows],
                  abs_delta=np.array([r[2] for r in rows]).reshape(len(rows), 6), mutants=[f"{n}_mut" for n in names],
                  completeness=completeness, total=total, **settings)


def sizes_frame(protein, layer, sizes, negligible=None, k=8, d_sae=D_SAE, space="latent", activations="interprot"):
    """A per-(protein, layer) circuit-size table as esmsae.tables.circuits.circuit_sizes_from_curves writes it."""
    n = len(sizes)
    negligible = [False] * n if negligible is None else list(negligible)
    frame = pd.DataFrame({
        "protein": protein, "layer": layer, "mutant": [f"A{i}C" for i in range(n)],
        "full_effect": np.linspace(-1, 1, n), "negligible": negligible, "n_features": sizes,
        "recovered_fraction": [np.nan if s is None else 0.95 for s in sizes], "k": k, "d_sae": d_sae, "space": space,
        "activations": activations,
    }, columns=SIZE_COLUMNS)
    frame["n_features"] = frame["n_features"].astype("Int64")
    return frame


def write_labels(path, labels):
    """A ``feature_labels.csv`` holding only `labels` (``{(layer, feature): label}``); other columns empty."""
    frame = pd.DataFrame({"layer": [layer for layer, _ in labels], "feature": [f for _, f in labels],
                          "label": list(labels.values())}).reindex(columns=TABLES["feature_labels"])
    frame.to_csv(path, index=False)
    return path
