"""What every figure shares: how it is saved, its notes, the layer axis and the mean ± s.e.m. line.

Figures are built as ``matplotlib.figure.Figure`` objects, not through ``pyplot``: no backend
is selected, no global figure registry holds them (nothing to close, nothing leaks), and
importing this module changes no matplotlib state. ``savefig`` renders with Agg (PNG) and the
PDF backend directly. Both files are written atomically (``esmsae.pipeline.io.atomic_path``) and
carry no creation date, so reruns write the same bytes.

Every figure function returns its ``Figure`` (already saved), so callers and tests can inspect
its axes and artists. Empty inputs give a panel that says there is no data.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esmsae.pipeline.io import atomic_path
from esmsae.tables.statistics import mean_sem

PathLike = str | os.PathLike


CONTROL_STYLE = {"real": ("C0", "o", "-"), "noop": ("0.5", "s", ":"), "stable": ("C2", "^", "--"),
                 "random": ("C3", "v", "-.")}


def save(fig: Figure, png: PathLike, pdf: PathLike) -> None:
    """Write `fig` to `png` and `pdf` atomically, without timestamps."""
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150, metadata={"Software": None})
    with atomic_path(pdf) as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": None, "Producer": None})


def note(ax: Axes, text: str) -> None:
    """Say in the middle of an empty panel why it is empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def layer_axis(ax: Axes) -> None:
    """An x axis of layers: labelled, integer ticks."""
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def mean_sem_line(ax: Axes, layers: list[int], samples, *, color: str, label: str, linestyle: str = "-",
                  marker: str | None = "o") -> np.ndarray:
    """At each layer, the mean of that layer's per-mutant values with its s.e.m. as an error bar
    (the mutant as the unit; no bar where it is undefined). Returns the means."""
    stats = [mean_sem(np.asarray(values, dtype=np.float64)) for values in samples]
    mean = np.array([m for m, _ in stats])
    ax.plot(layers, mean, color=color, linestyle=linestyle, marker=marker, label=label)
    ax.errorbar(layers, mean, yerr=np.nan_to_num(np.array([e for _, e in stats]), nan=0.0), fmt="none",
                ecolor=color, capsize=0)
    return mean


def grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    ncols = max(1, min(n, max_cols))
    return -(-max(n, 1) // ncols), ncols


def proteins_of(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["protein"])) if len(frame) else []
