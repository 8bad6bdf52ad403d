"""The statistics the tables report, each defined once and tested on hand-made arrays (no torch here).

Concentration (METHOD.md "Concentration and universality"): :func:`gini`, :func:`top_share`,
:func:`k90`. Uncertainty with the mutant as the unit: :func:`mean_sem` over one value per mutant,
:func:`wilcoxon_p` over paired per-mutant differences. :func:`spearman` for rank agreement.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


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


def top_share(abs_attr: np.ndarray, n: int = 20) -> float:
    """``Σ top-n |A| / Σ |A|`` (absolute values are taken here too); NaN when ``Σ |A| = 0``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    a = np.abs(np.asarray(abs_attr, dtype=np.float64).ravel())
    total = a.sum()
    if total == 0:
        return float("nan")
    return float(np.sort(a)[::-1][:n].sum() / total)


def k90(values: np.ndarray, share: float = 0.9) -> float:
    """Fewest values whose largest reach `share` of their sum (absolute values); NaN when the sum is 0.

    ``[4, 3, 2, 1]``: the sum is 10, 0.9 of it is 9, and 4 + 3 + 2 = 9 reaches it: 3.
    """
    x = np.sort(np.abs(np.asarray(values, dtype=np.float64).ravel()))[::-1]
    total = x.sum()
    if total == 0:
        return float("nan")
    reached = np.cumsum(x) >= share * total * (1 - 1e-12)  # a sum equal to the bar reaches it
    return float(np.argmax(reached) + 1)


def mean_sem(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error over the finite values (one per mutant): ``std(ddof=1)/√n``.

    ``[1, 2, 3, 4]`` gives 2.5 and √(5/3)/2 ≈ 0.6455; one value gives it and NaN; none gives NaN, NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size)) if x.size >= 2 else float("nan")


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences; NaN below 2 or when all are 0."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2 or not np.any(d != 0):
        return float("nan")
    return float(stats.wilcoxon(d).pvalue)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman ρ and its p-value; ``(nan, nan)`` for fewer than 3 points or a constant input."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)
