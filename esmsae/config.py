"""The pipeline's configuration: schema, semantic checks and lookups.

The JSON schema (``config.schema.yaml`` beside this file) catches unknown keys
and wrong types; :func:`check_config` catches what a schema cannot say. The
Snakefile and the scripts use the lookups below, so each rule of naming
(SAE file per layer, k per layer, the layers analysed) is written once.
"""

from __future__ import annotations

from pathlib import Path

from esmsae.errors import InputError
from esmsae.mutations import check_wt_sequence
from esmsae.settings import CircuitSettings, IGSettings, PatchSettings, SelectionSettings

SCHEMA = Path(__file__).with_name("config.schema.yaml")
# Defaults inside the optional `demo` and `sae.train` blocks (the schema cannot
# default keys inside an object that may be null).
DEMO_DEFAULTS = {"seed": 0}
TRAIN_DEFAULTS = {"steps": 2000, "lr": 1e-3, "batch_size": 1024, "n_mutants": 200, "seed": 0}


def check_config(config: dict) -> None:
    """Checks beyond the schema; each error names the config key."""
    k = config["sae"]["k"]
    if isinstance(k, dict):
        for layer in k:
            if not str(layer).isdigit() or int(layer) < 1:
                raise InputError(f"config key sae.k: layer {layer!r} is not a positive integer")
        missing = [layer for layer in analysis_layers(config) if layer not in {int(x) for x in k}]
        if missing:
            raise InputError(f"config key sae.k: no k given for layer(s) {missing}")
    for name, protein in config["proteins"].items():
        check_wt_sequence(protein["wt_seq"], f"config key proteins.{name}.wt_seq")
        if config["mutations"].get("source", "dms") == "dms" and not protein.get("dms"):
            raise InputError(f"config key proteins.{name}.dms: required when mutations.source is 'dms'")
    if not analysis_layers(config):
        raise InputError("config keys patching.layers and ig.layers: no layer to analyse")


def demo_settings(config: dict) -> dict | None:
    """The `demo` block with its defaults, or None when the demo model is off."""
    spec = config.get("demo")
    return None if spec is None else {**DEMO_DEFAULTS, **spec}


def train_settings(config: dict) -> dict | None:
    """The `sae.train` block with its defaults, or None when SAEs are read, not trained."""
    spec = config["sae"].get("train")
    return None if spec is None else {**TRAIN_DEFAULTS, **spec}


def analysis_layers(config: dict) -> list[int]:
    """Every layer some analysis needs an SAE for, sorted."""
    return sorted(set(config["patching"]["layers"]) | set(config["ig"]["layers"]))


def sae_k(config: dict, layer: int) -> int:
    """The TopK k for `layer` (one value, or a per-layer mapping)."""
    k = config["sae"]["k"]
    if isinstance(k, dict):
        by_layer = {int(key): int(value) for key, value in k.items()}
        if int(layer) not in by_layer:
            raise InputError(f"config key sae.k: no k given for layer {layer}")
        return by_layer[int(layer)]
    return int(k)


def sae_file_pattern(config: dict) -> str:
    """The SAE file path with a ``{layer}`` wildcard."""
    return str(Path(config["sae"]["dir"]) / config["sae"]["pattern"])


def sae_file(config: dict, layer: int) -> str:
    return sae_file_pattern(config).format(layer=int(layer))


def selection_settings(config: dict, protein: str) -> SelectionSettings:
    """The ``mutations`` block with the protein's own ``max_dms`` override applied."""
    m = config["mutations"]
    entry = config["proteins"][protein]
    max_dms = entry["max_dms"] if entry.get("max_dms") is not None else m.get("max_dms")
    return SelectionSettings(source=m.get("source", "dms"), max_dms=max_dms, n=int(m.get("n", 50)),
                             seed=int(m.get("seed", 0)), multi=bool(m.get("multi", False)))


def batch_size(config: dict) -> int | None:
    """The configured interventions per pass; None (auto) lets the engine size batches."""
    value = config.get("batch_size", "auto")
    return None if value == "auto" else int(value)


def patch_settings(config: dict) -> PatchSettings:
    """The ``patching`` block with the shared ``space`` and ``batch_size``."""
    p = config["patching"]
    return PatchSettings(space=config["space"], features=p["features"], n=p["n"], seed=p["seed"],
                         batch_size=batch_size(config))


def ig_settings(config: dict) -> IGSettings:
    """The ``ig`` block with the shared ``space`` and ``batch_size``."""
    g = config["ig"]
    return IGSettings(steps=g["steps"], rule=g["rule"], space=config["space"], error_node=g["error_node"],
                      batch_size=batch_size(config))


def circuit_settings(config: dict) -> CircuitSettings:
    """The ``circuits`` block with the shared ``space`` and ``batch_size``."""
    c = config["circuits"]
    return CircuitSettings(recover=c["recover"], max_k=c["max_k"], space=config["space"],
                           batch_size=batch_size(config))
