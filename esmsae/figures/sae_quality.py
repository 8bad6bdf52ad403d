"""Figure of SAE fidelity by layer, on both forwards: reconstruction, what the model loses, what the assay loses.

Built as :mod:`esmsae.figures.style` says. Input: ``tables/sae_quality.csv`` (and its per-protein
task fidelity, ``tables/sae_task_fidelity.csv``). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from esmsae.config.settings import ACTIVATIONS
from esmsae.figures.style import PathLike, layer_axis, note, save
from esmsae.pipeline.columns import read_table

STYLE = {"interprot": ("C0", "-", "o"), "fair-esm": ("C3", "--", "s")}


def read_quality(inputs: Mapping[str, Path]) -> dict:
    return {"quality": read_table(inputs["quality"], "sae_quality"),
            "task": read_table(inputs["task"], "sae_task_fidelity")}


def sae_fidelity(quality: pd.DataFrame, task: pd.DataFrame, png: PathLike, pdf: PathLike) -> Figure:
    """Four panels by layer, one line per forward (the study's solid and labelled as such):

    FVE at k (with k/2 and 2k as thin lines), loss recovered, KL(clean ‖ reconstructed) over the 20
    amino acids, and the task fidelity: ρ(clean, reconstructed) of every single's WT-marginal score,
    mean over proteins, with each protein's as dots; ρ with DMS (clean and reconstructed) where the
    assay has it. A layer whose SAE was flagged at another k is marked with a red ring.
    """
    fig = Figure(figsize=(11, 7.6), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    study = quality.loc[quality["study_forward"].astype(bool), "activations"]
    study = str(study.iloc[0]) if len(study) else ""
    panels = [("fve", "FVE (fraction of variance explained)"), ("loss_recovered", "loss recovered (masked-LM CE)"),
              ("kl", "KL(p_clean ‖ p_recon), 20 amino acids"), ("spearman_clean_recon_mean",
                                                                 "task fidelity: ρ(clean, reconstructed scores)")]
    for ax, (column, title) in zip(axes, panels, strict=True):
        for activations in ACTIVATIONS:
            rows = quality[quality["activations"] == activations].sort_values("layer", kind="mergesort")
            if rows.empty:
                continue
            color, linestyle, marker = STYLE[activations]
            label = f"{activations} forward" + (" (the study's)" if activations == study else "")
            layers = rows["layer"].to_numpy(dtype=np.int64)
            ax.plot(layers, rows[column].to_numpy(dtype=np.float64), color=color, linestyle=linestyle,
                    marker=marker, label=label, linewidth=2.2 if activations == study else 1.4)
            if column == "fve":
                for other, alpha in (("fve_half_k", 0.45), ("fve_double_k", 0.45)):
                    ax.plot(layers, rows[other].to_numpy(dtype=np.float64), color=color, linestyle=":",
                            alpha=alpha, linewidth=1)
                flagged = rows["wrong_k"].fillna("").astype(str) != ""
                if flagged.any():
                    ax.scatter(layers[flagged.to_numpy()], rows.loc[flagged, "fve"], s=160, facecolors="none",
                               edgecolors="red", linewidths=1.5, label="FVE far higher at another k")
            if column == "spearman_clean_recon_mean":
                part = task[task["activations"] == activations]
                ax.scatter(part["layer"], part["spearman_clean_recon"], color=color, s=10, alpha=0.5)
                if part["n_dms"].sum() > 0:
                    dms = part.groupby("layer")[["spearman_dms_clean", "spearman_dms_recon"]].mean()
                    ax.plot(dms.index, dms["spearman_dms_clean"], color=color, linestyle=linestyle, alpha=0.5,
                            marker="^", label=f"ρ with DMS, clean ({activations})")
                    ax.plot(dms.index, dms["spearman_dms_recon"], color=color, linestyle=":", marker="v",
                            label=f"ρ with DMS, reconstructed ({activations})")
        if not ax.lines:
            note(ax, "no data")
        layer_axis(ax)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("thin dotted: at k/2 and 2k")
    axes[3].set_ylabel("dots: each protein")
    fig.suptitle("SAE fidelity by layer, on the forward the SAEs read and on the other")
    save(fig, png, pdf)
    return fig
