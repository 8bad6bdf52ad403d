"""The pipeline's configuration: validated once against the schema, then parsed into typed settings.

``config.schema.yaml`` beside this file catches unknown keys and wrong types and holds
every default. :func:`parse` turns a validated config into a :class:`~esmsae.config.settings.Study`
and checks what a schema cannot say; :func:`load` does both (for code outside Snakemake).
The Snakefile validates with ``snakemake.utils.validate`` and calls :func:`parse` once;
rule scripts rebuild the settings a rule was given from its params
(:func:`esmsae.config.settings.from_params`) and the runtime knobs with :func:`runtime`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

from esmsae.config.settings import (
    AblationSettings,
    CircuitSettings,
    CircuitSizeSettings,
    DemoSettings,
    FeatureSettings,
    FindingsSettings,
    Forward,
    GraphSettings,
    IGSettings,
    PatchSettings,
    PositionSettings,
    Protein,
    Runtime,
    SelectionSettings,
    Study,
    TrainSettings,
)
from esmsae.inputs.mutations import check_wt_sequence, selectable_count
from esmsae.inputs.proteingym import read_reference
from esmsae.pipeline.errors import InputError

SCHEMA = Path(__file__).with_name("schema.yaml")
# Where a protein's UniProt GFF3 is fetched to when only its accession is configured.
UNIPROT_DIR = "data/uniprot"


def validate(config: dict) -> dict:
    """Check `config` against the schema and fill in its defaults, in place; returns it."""
    from snakemake.utils import validate as schema_validate

    schema_validate(config, str(SCHEMA), set_default=True)
    return config


def load(config: Mapping) -> Study:
    """Validate a copy of `config` (defaults filled in) and parse it."""
    return parse(validate(copy.deepcopy(dict(config))))


def runtime(config: Mapping) -> Runtime:
    """The runtime knobs of a validated config (``snakemake.config`` in a rule script)."""
    batch = config["batch_size"]
    return Runtime(device=config["device"], batch_size=None if batch == "auto" else int(batch),
                   trust_pickle=bool(config["esm_trust_pickle"]), keep_pieces=bool(config["keep_pieces"]))


def parse(config: Mapping) -> Study:
    """The typed settings of a validated config; each error names the config key."""
    patching_layers = tuple(config["patching"]["layers"])
    ig_layers = tuple(config["ig"]["layers"])
    positions_layers = tuple(config["positions"]["layers"] if config["positions"]["layers"] is not None
                             else patching_layers)
    graph = config["graph"]
    graph_layers = tuple(sorted(graph["layers"] if graph["layers"] is not None else patching_layers))
    layers = sorted(set(patching_layers) | set(ig_layers) | set(positions_layers) | set(graph_layers))
    if not layers:
        raise InputError("config keys patching.layers and ig.layers: no layer to analyse")
    sae = config["sae"]
    space = config["space"]
    a = config["ablation"]
    ablation_layers = tuple(sorted(a["layers"] if a["layers"] is not None else ig_layers))
    outside = sorted(set(ablation_layers) - set(ig_layers))
    if outside:
        raise InputError(f"config key ablation.layers: layer(s) {outside} have no circuits (not in ig.layers "
                         f"{sorted(ig_layers)}); the circuit and top sets need them")
    p, g, c = config["patching"], config["ig"], config["circuits"]
    return Study(
        outdir=config["outdir"],
        checkpoint=config["esm_checkpoint"],
        forward=Forward(precision=config["precision"], activations=config["sae"]["activations"]),
        sae_dir=str(sae["dir"]),
        sae_pattern=sae["pattern"],
        sae_k=_k_by_layer(sae["k"], layers),
        train=TrainSettings(**sae["train"]) if sae["train"] is not None else None,
        demo=DemoSettings(**config["demo"]) if config["demo"] is not None else None,
        proteins={name: _protein(name, entry, config["mutations"]) for name, entry in study_proteins(config).items()},
        patching_layers=patching_layers,
        ig_layers=ig_layers,
        patching=PatchSettings(space=space, features=p["features"], n=p["n"], stable_n=p["stable_n"], seed=p["seed"]),
        ig=IGSettings(space=space, steps=g["steps"], rule=g["rule"], error_node=g["error_node"]),
        circuits=CircuitSettings(space=space, max_k=c["max_k"]),
        circuit_sizes=CircuitSizeSettings(recover=c["recover"], min_effect=c["min_effect"]),
        features=FeatureSettings(**config["features"]),
        positions=PositionSettings(min_effect=config["positions"]["min_effect"]),
        positions_layers=positions_layers,
        graph=GraphSettings(layers=graph_layers, max_edges=graph["max_edges"], check_edges=graph["check_edges"],
                            hold=graph["hold"], top_edges=graph["top_edges"], seed=graph["seed"]),
        ablation=AblationSettings(sets=tuple(a["sets"]), top_n=a["top_n"], n_null=a["n_null"],
                                  positions=a["positions"], seed=a["seed"]),
        ablation_layers=ablation_layers,
        findings=FindingsSettings(**config["findings"]),
        top_n=p["top_n"],
        min_proteins=config["universal"]["min_proteins"],
        runtime=runtime(config),
    )


def _k_by_layer(k: int | Mapping, layers: list[int]) -> dict[int, int]:
    """The TopK k of every analysed layer: one value, or a mapping layer -> k."""
    if not isinstance(k, Mapping):
        return {layer: int(k) for layer in layers}
    by_layer = {}
    for layer, value in k.items():
        if not str(layer).isdigit() or int(layer) < 1:
            raise InputError(f"config key sae.k: layer {layer!r} is not a positive integer")
        by_layer[int(layer)] = int(value)
    missing = [layer for layer in layers if layer not in by_layer]
    if missing:
        raise InputError(f"config key sae.k: no k given for layer(s) {missing}")
    return {layer: by_layer[layer] for layer in layers}


def figure_proteins(figures: Mapping, proteins: Mapping[str, Protein]) -> tuple[str, ...]:
    """The proteins the per-protein figures draw: ``figures.proteins`` as given (each a studied protein), or
    the ``figures.n_proteins`` with the most selected mutants, ties in config order (every protein when there
    are no more)."""
    if figures["proteins"] is not None:
        unknown = [name for name in figures["proteins"] if name not in proteins]
        if unknown:
            raise InputError(f"config key figures.proteins: {unknown} not among the studied proteins")
        return tuple(figures["proteins"])
    names = list(proteins)
    if len(names) <= figures["n_proteins"]:
        return tuple(names)

    def selected(protein: Protein) -> int:
        s = protein.selection
        if s.source == "model" or not protein.dms:
            return s.n
        return selectable_count(protein.dms, s.max_dms, s.n, s.multi)

    counts = {name: selected(proteins[name]) for name in names}
    ranked = sorted(names, key=lambda name: (-counts[name], names.index(name)))
    return tuple(ranked[:figures["n_proteins"]])


def study_proteins(config: Mapping) -> dict[str, Mapping]:
    """The proteins written under ``proteins`` and those read from ProteinGym's reference file (``proteingym``):
    a name in both is an error, and a study needs at least one."""
    written = dict(config["proteins"])
    pg = config.get("proteingym")
    read = read_reference(pg["reference"], pg["dms_dir"], pg["assays"]) if pg else {}
    both = sorted(set(written) & set(read))
    if both:
        raise InputError(f"config keys proteins and proteingym: {both} named in both")
    defaults = {"max_dms": None, "annotations": None, "uniprot": None, "uniprot_offset": 0}
    merged = written | {name: defaults | entry for name, entry in read.items()}
    if not merged:
        raise InputError("config keys proteins and proteingym: no protein to study")
    return merged


def _protein(name: str, entry: Mapping, mutations: Mapping) -> Protein:
    wt_seq = check_wt_sequence(entry["wt_seq"], f"config key proteins.{name}.wt_seq")
    if mutations["source"] == "dms" and not entry["dms"]:
        raise InputError(f"config key proteins.{name}.dms: required when mutations.source is 'dms'")
    max_dms = entry["max_dms"] if entry["max_dms"] is not None else mutations["max_dms"]
    selection = SelectionSettings(source=mutations["source"], max_dms=max_dms, n=int(mutations["n"]),
                                  seed=int(mutations["seed"]), multi=bool(mutations["multi"]))
    annotations = entry["annotations"]
    if annotations is None and entry["uniprot"]:
        annotations = str(Path(UNIPROT_DIR) / f"{entry['uniprot']}.gff")
    return Protein(name=name, wt_seq=wt_seq, dms=entry["dms"], selection=selection, annotations=annotations,
                   uniprot=entry["uniprot"], uniprot_offset=int(entry["uniprot_offset"]))
