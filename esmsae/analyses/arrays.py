"""The analyses' npz files, each a typed object written and read back through the same type.

``ig/{protein}_L{layer}.npz`` (and ``atp/``) is :class:`Attributions`: one row per mutant, plus
the settings that made it. ``features/L{layer}_activity.npz`` is :class:`Activity`: counts over
the reference positions. Reading checks every array's shape (and that attributions are finite),
with one error that names the file. Nothing here imports torch: the table rules read them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from esmsae.pipeline.columns import SAE_SETTINGS
from esmsae.pipeline.errors import InputError
from esmsae.pipeline.io import atomic_path, read_npz

PER_MUTANT = ("error_attribution", "total_effect", "completeness_error", "quadrature_delta")


SETTINGS = ("steps", "rule", "space", "k", "d_sae", "error_node", "layer", "activations")


@dataclass(frozen=True)
class Attributions:
    """Integrated gradients of one protein's mutants at one layer (METHOD.md "Integrated gradients").

    ``attribution`` is (n, d_sae) ``A_j`` summed over sites; ``abs_delta`` (n, d_sae) is how
    far each feature moves along the path, ``Σ_sites |end − start|`` in the run's space
    (``|z_mut − z_wt|`` in ``latent``): the changed set is where it is nonzero, and it is
    the concentration statistics' null. The per-mutant arrays are (n,). The settings
    (quadrature ``steps`` and ``rule``, ``space``, the SAE's ``k`` and ``d_sae``,
    ``error_node``, ``layer``, the forward ``activations``) are None only for results built by hand.
    """

    mutant: np.ndarray
    attribution: np.ndarray
    abs_delta: np.ndarray
    error_attribution: np.ndarray
    total_effect: np.ndarray
    completeness_error: np.ndarray
    quadrature_delta: np.ndarray
    steps: int | None = None
    rule: str | None = None
    space: str | None = None
    k: int | None = None
    d_sae: int | None = None
    error_node: bool | None = None
    layer: int | None = None
    activations: str | None = None

    @property
    def n(self) -> int:
        return self.attribution.shape[0]

    @property
    def sae_settings(self) -> dict:
        """What every table made from it records of how it was made (``SAE_SETTINGS``)."""
        return {name: getattr(self, name) for name in SAE_SETTINGS}

    @classmethod
    def of(cls, data: Mapping, where: str) -> Attributions:
        """Check arrays (as an npz holds them) and build the type; ValueError naming `where`.

        ``quadrature_delta`` may be left out (NaN), and so may the settings.
        """
        missing = [key for key in ("mutant", "attribution", "abs_delta", *PER_MUTANT[:3]) if key not in data]
        if missing:
            raise ValueError(f"{where}: missing arrays {missing}")
        attribution = np.asarray(data["attribution"], dtype=np.float64)
        if attribution.ndim != 2:
            raise ValueError(f"{where}: attribution must be 2-D (n, d_sae), got shape {attribution.shape}")
        n = attribution.shape[0]
        values = {"mutant": np.asarray(data["mutant"]).astype(str), "attribution": attribution,
                  "abs_delta": np.asarray(data["abs_delta"], dtype=np.float64)}
        if values["abs_delta"].shape != attribution.shape:
            raise ValueError(f"{where}: abs_delta has shape {values['abs_delta'].shape}, "
                             f"expected {attribution.shape} like attribution")
        for key in PER_MUTANT:
            values[key] = np.asarray(data[key], dtype=np.float64) if key in data else np.full(n, np.nan)
        for key in ("mutant", *PER_MUTANT):
            if values[key].shape != (n,):
                raise ValueError(f"{where}: {key} has shape {values[key].shape}, expected ({n},)")
        for key in ("attribution", "abs_delta", "error_attribution"):
            if not np.isfinite(values[key]).all():
                raise ValueError(f"{where}: {key} has NaN or infinite values")
        kinds = {"steps": int, "rule": str, "space": str, "k": int, "d_sae": int, "error_node": bool, "layer": int,
                 "activations": str}
        for key, kind in kinds.items():
            values[key] = kind(np.asarray(data[key])) if key in data else None
        return cls(**values)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Attributions:
        """An npz written by :meth:`write` (every setting there); InputError naming the file if it is not one."""
        arrays = read_npz(path, "IG results")
        try:
            result = cls.of(arrays, str(path))
        except ValueError as err:
            raise InputError(str(err)) from None
        missing = [key for key in SETTINGS if key not in arrays]
        if missing:
            raise InputError(f"{path}: IG results without the setting(s) {', '.join(missing)}; if an older version of "
                             "the pipeline wrote it, delete it so that its rule runs again")
        return result

    def write(self, path: str | os.PathLike) -> None:
        """One ``.npz`` with the arrays and the settings that made them, written atomically."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays["mutant"] = np.asarray(self.mutant, dtype=str)
        for key in SETTINGS:
            if arrays[key] is None:
                raise ValueError(f"Attributions.write: setting {key} is not set")
            arrays[key] = np.array(arrays[key])
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # savez would append .npz to a temporary name; write the bytes instead
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())


@dataclass(frozen=True)
class Activity:
    """What one layer's features did over the reference positions (``features/L{layer}_activity.npz``).

    Counts only, so any number of sequences fits in memory: ``residue_counts`` (20,),
    ``n_active`` (d_sae,), ``active_by_residue`` and ``activation_by_residue`` (d_sae, 20) (counts
    and summed ``z_j`` of the positions of each residue), ``max_activation`` (d_sae,). Residues are
    in ``AMINO_ACIDS`` order. ``wt_latents`` holds each configured protein's WT latents (L, d_sae)
    for output effects and feature cards. ``activations`` names the forward the SAE read.
    """

    layer: int
    k: int
    d_sae: int
    activations: str
    n_sequences: int
    n_positions: int
    residue_counts: np.ndarray
    n_active: np.ndarray
    active_by_residue: np.ndarray
    activation_by_residue: np.ndarray
    max_activation: np.ndarray
    wt_latents: dict[str, np.ndarray]

    def write(self, path: str | os.PathLike) -> None:
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.name != "wt_latents"}
        arrays |= {f"wt_latents/{protein}": z for protein, z in self.wt_latents.items()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    @classmethod
    def read(cls, path: str | os.PathLike) -> Activity:
        arrays = read_npz(path, "feature activity")
        missing = [f.name for f in fields(cls) if f.name != "wt_latents" and f.name not in arrays]
        if missing:
            raise InputError(f"{path}: not a feature activity file (missing {', '.join(missing)})")
        scalars = {"layer", "k", "d_sae", "n_sequences", "n_positions"}
        values = {name: int(arrays[name]) if name in scalars else arrays[name]
                  for name in (f.name for f in fields(cls)) if name != "wt_latents"}
        values["activations"] = str(arrays["activations"])
        values["wt_latents"] = {key.split("/", 1)[1]: value for key, value in arrays.items()
                                if key.startswith("wt_latents/")}
        d_sae = values["d_sae"]
        for name, shape in (("n_active", (d_sae,)), ("active_by_residue", (d_sae, 20)),
                            ("activation_by_residue", (d_sae, 20)), ("max_activation", (d_sae,)),
                            ("residue_counts", (20,))):
            if values[name].shape != shape:
                raise InputError(f"{path}: {name} has shape {values[name].shape}, expected {shape}")
        return cls(**values)


def sum_activity(parts: list[Activity]) -> Activity:
    """The counts of several chunks of reference sequences added up."""
    first = parts[0]
    return Activity(
        layer=first.layer, k=first.k, d_sae=first.d_sae, activations=first.activations,
        n_sequences=sum(p.n_sequences for p in parts),
        n_positions=sum(p.n_positions for p in parts),
        **{name: sum(getattr(p, name) for p in parts)
           for name in ("residue_counts", "n_active", "active_by_residue", "activation_by_residue")},
        max_activation=np.maximum.reduce([p.max_activation for p in parts]),
        wt_latents={name: z for p in parts for name, z in p.wt_latents.items()},
    )


ABLATION_ARRAYS = ("set", "draw", "size", "features", "scores", "clean", "mutant", "dms", "protein", "layer", "k",
                   "d_sae", "activations", "n_null", "positions", "seed")


def read_ablation(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A set-ablation file's arrays (``ablation/{protein}_L{layer}.npz``, written by
    :func:`esmsae.analyses.ablation.write_ablation`), checked for its arrays and shapes."""
    arrays = read_npz(path, "set ablation")
    missing = [name for name in ABLATION_ARRAYS if name not in arrays]
    if missing:
        raise InputError(f"{path}: not a set ablation file (missing {', '.join(missing)})")
    rows, n = len(arrays["set"]), len(arrays["mutant"])
    if arrays["scores"].shape != (rows, n) or arrays["clean"].shape != (n,) or arrays["dms"].shape != (n,):
        raise InputError(f"{path}: scores {arrays['scores'].shape}, clean {arrays['clean'].shape} and dms "
                         f"{arrays['dms'].shape} do not fit {rows} rows of {n} singles")
    return arrays
