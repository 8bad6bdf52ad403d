"""The study's settings as frozen, typed objects (no torch import here).

:func:`esmsae.config.load` builds them once from the config, right after schema
validation; defaults live in the schema only, so no field here has one. Nothing
below the rule scripts sees the raw config dict.

Two kinds of setting, kept apart because they are treated differently:

* **Science** (everything but :class:`Runtime`): decides the numbers. A rule gets the
  settings it depends on as ``params`` (plain dicts, :func:`as_params`), so editing
  one reruns exactly the jobs it changes, and they are part of every resume fingerprint.
* **Runtime** (:class:`Runtime`, and the thread count from the profile): how fast and
  where a job runs. Never a rule's params, never in a fingerprint: changing them after
  a finished run plans nothing, and a killed job rerun with another ``batch_size``
  reuses its finished pieces.

Each error names the config key at fault.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from esmsae.pipeline.errors import InputError

SPACES = ("latent", "pre")


FEATURE_SETS = ("changed", "top_delta")


RULES = ("gausslegendre", "riemann_middle", "riemann_left", "riemann_right")


# captum 0.9.0's riemann_trapezoid puts n nodes 1/(n-1) apart but weights them 1/n,
# so its weights sum to 1 - 1/n and every attribution is scaled by that (0.8 at
# n = 5). It is refused until captum fixes it (tests/test_ig.py watches for that).
BIASED_RULES = ("riemann_trapezoid",)


PRECISIONS = ("fp32", "tf32", "bf16")
# The two forwards of one checkpoint (METHOD.md "Which forward the SAEs read"); the first is the default.
ACTIVATIONS = ("interprot", "fair-esm")


S = TypeVar("S")


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise InputError(f"config key space: {space!r} is not one of {SPACES}")


@dataclass(frozen=True)
class Runtime:
    """How jobs run; never changes a number (see the module docstring)."""

    device: str               # auto | cpu | cuda
    batch_size: int | None    # interventions per pass; None: sized by the engine
    trust_pickle: bool        # esm_trust_pickle
    keep_pieces: bool = False  # keep finished resume pieces beside their output (profiles/unity)


@dataclass(frozen=True)
class Forward:
    """The forward every job of a study runs: its precision and which activations the SAEs read
    (``sae.activations``). Scores, splices and every analysis use this one forward, so the splice
    reproduces its logits and every invariant holds."""

    precision: str
    activations: str

    def __post_init__(self):
        if self.activations not in ACTIVATIONS:
            raise InputError(f"config key sae.activations: {self.activations!r} is not one of {ACTIVATIONS}")
        if self.precision not in PRECISIONS:
            raise InputError(f"config key precision: {self.precision!r} is not one of {PRECISIONS}")


@dataclass(frozen=True)
class SelectionSettings:
    """The ``mutations`` config block, with a protein's own ``max_dms`` applied."""

    source: str
    max_dms: float | None
    n: int
    seed: int
    multi: bool


@dataclass(frozen=True)
class Protein:
    """One configured protein: its WT sequence, assay file and mutation selection."""

    name: str
    wt_seq: str
    dms: str | None
    selection: SelectionSettings
    annotations: str | None   # a UniProt GFF3 (concepts); where only `uniprot` is set, the file it is fetched to
    uniprot: str | None
    uniprot_offset: int


@dataclass(frozen=True)
class PatchSettings:
    """The ``patching`` block's science, with the shared ``space``."""

    space: str
    features: str
    n: int
    stable_n: int
    seed: int

    def __post_init__(self):
        _check_space(self.space)
        if self.features not in FEATURE_SETS:
            raise InputError(f"config key patching.features: {self.features!r} is not one of {FEATURE_SETS}")


@dataclass(frozen=True)
class IGSettings:
    """The ``ig`` block's science, with the shared ``space``."""

    space: str
    steps: int
    rule: str
    error_node: bool

    def __post_init__(self):
        if self.rule in BIASED_RULES:
            raise InputError(f"config key ig.rule: captum's {self.rule} weights do not sum to 1 "
                             f"(a biased rule); use one of {RULES}")
        if self.rule not in RULES:
            raise InputError(f"config key ig.rule: {self.rule!r} is not one of {RULES}")
        _check_space(self.space)
        if self.steps < (1 if self.rule == "gausslegendre" else 2):
            raise InputError(f"config key ig.steps: {self.steps} is too few for rule {self.rule} "
                             "(Riemann rules need at least 2)")


@dataclass(frozen=True)
class CircuitSettings:
    """What rule find_circuits measures: the curves up to ``circuits.max_k``, in the shared ``space``."""

    space: str
    max_k: int

    def __post_init__(self):
        _check_space(self.space)
        if self.max_k < 1:
            raise InputError(f"config key circuits.max_k: {self.max_k} must be >= 1")


@dataclass(frozen=True)
class CircuitSizeSettings:
    """How a minimal circuit is read off the measured curves (``circuits.recover``, ``circuits.min_effect``).

    Thresholds only: changing them reruns the tables and figures, never the measurement.
    """

    recover: float
    min_effect: float

    def __post_init__(self):
        if not 0 < self.recover <= 1:
            raise InputError(f"config key circuits.recover: {self.recover} must be in (0, 1]")
        if self.min_effect < 0:
            raise InputError(f"config key circuits.min_effect: {self.min_effect} must be >= 0")


@dataclass(frozen=True)
class FeatureSettings:
    """The ``features`` block: how features are characterised and labelled."""

    reference: str | None
    max_sequences: int
    identity_f1: float
    max_positions: int
    max_cards: int
    concept_f1: float
    dms_sensitive: bool
    n_examples: int
    example_window: int

    @property
    def activity(self) -> ActivitySettings:
        """What the activity pass (characterize_features) depends on: not the label bars, so changing those
        never reruns it."""
        return ActivitySettings(reference=self.reference, max_sequences=self.max_sequences,
                                n_examples=self.n_examples, example_window=self.example_window)


@dataclass(frozen=True)
class ActivitySettings:
    """The reference and the top examples the activity pass keeps (a part of the ``features`` block)."""

    reference: str | None
    max_sequences: int
    n_examples: int
    example_window: int


@dataclass(frozen=True)
class PositionSettings:
    """The ``positions`` block's science (which layers run is the study's)."""

    min_effect: float  # |P_all| below it: negligible, no site share (a ratio of near-zero numbers)


@dataclass(frozen=True)
class GraphSettings:
    """The ``graph`` block: cross-layer feature graphs between consecutive layers of ``layers``."""

    layers: tuple[int, ...]
    max_edges: int      # candidate edges per mutant and layer pair measured exactly (ranked by AtP)
    check_edges: int    # further candidates measured at random, to see what AtP's cut missed
    hold: int           # downstream features held together for an upstream feature's mediated share
    top_edges: int      # edges kept in each mutant's graph (largest |M|)
    seed: int


@dataclass(frozen=True)
class PairSettings:
    """One graph job's science: the ``graph`` block's, the shared ``space``, and the downstream layer."""

    space: str
    max_edges: int
    check_edges: int
    hold: int
    seed: int
    layer2: int
    k2: int             # the downstream SAE's TopK k

    def __post_init__(self):
        _check_space(self.space)


ABLATION_SETS = ("circuit", "universal", "identity", "top")
ABLATION_POSITIONS = ("every", "site")


@dataclass(frozen=True)
class AblationSettings:
    """The ``ablation`` block's science (which layers run is the study's)."""

    sets: tuple[str, ...]
    top_n: int | None     # size of the `top` set; None: the circuit set's size
    n_null: int           # frequency-matched random sets per set
    positions: str        # every | site
    seed: int

    def __post_init__(self):
        bad = [s for s in self.sets if s not in ABLATION_SETS]
        if bad:
            raise InputError(f"config key ablation.sets: {bad} not among {ABLATION_SETS}")
        if self.positions not in ABLATION_POSITIONS:
            raise InputError(f"config key ablation.positions: {self.positions!r} is not one of {ABLATION_POSITIONS}")


def required_proteins(min_proteins: int | float, n_proteins: int) -> int:
    """The ``universal.min_proteins`` bar at a layer with `n_proteins` proteins: a count as given, or a fraction of
    `n_proteins` rounded up; never fewer than 2 (one protein is not "universal")."""
    if isinstance(min_proteins, bool) or min_proteins <= 0:
        raise InputError(f"config key universal.min_proteins: {min_proteins!r} is neither a count nor a fraction")
    if isinstance(min_proteins, float) and min_proteins < 1:
        return max(2, math.ceil(min_proteins * n_proteins - 1e-9))
    if min_proteins != int(min_proteins):
        raise InputError(f"config key universal.min_proteins: {min_proteins!r} is neither a count nor a fraction")
    return max(2, int(min_proteins))


@dataclass(frozen=True)
class FindingsSettings:
    """The ``findings`` block: the bar of every verdict and the universal-feature null's draws."""

    alpha: float
    n_null: int
    seed: int


@dataclass(frozen=True)
class TrainSettings:
    """The ``sae.train`` block: fit SAEs instead of reading released ones."""

    d_sae: int
    steps: int
    lr: float
    batch_size: int
    n_mutants: int
    seed: int


@dataclass(frozen=True)
class DemoSettings:
    """The ``demo`` block: the shape of the tiny random ESM-2 the demo builds."""

    layers: int
    embed_dim: int
    heads: int
    seed: int


@dataclass(frozen=True)
class LayerJob:
    """What one per-(protein, layer) job works on, beside its analysis settings: all science."""

    protein: str
    wt_seq: str
    layer: int
    k: int            # the SAE's TopK k at this layer
    forward: Forward


@dataclass(frozen=True)
class Study:
    """The whole validated config, typed."""

    outdir: str
    checkpoint: str
    forward: Forward
    sae_dir: str
    sae_pattern: str
    sae_k: dict[int, int]            # k of every analysed layer
    train: TrainSettings | None
    demo: DemoSettings | None
    proteins: dict[str, Protein]
    patching_layers: tuple[int, ...]
    ig_layers: tuple[int, ...]
    patching: PatchSettings
    ig: IGSettings
    circuits: CircuitSettings
    circuit_sizes: CircuitSizeSettings
    features: FeatureSettings
    positions: PositionSettings
    positions_layers: tuple[int, ...]  # layers of the spread over positions
    graph: GraphSettings
    ablation: AblationSettings
    findings: FindingsSettings
    ablation_layers: tuple[int, ...]  # layers whose feature sets are ablated (with circuits: IG layers)
    top_n: int                        # mutants per protein in tables/top_mutations.csv
    min_proteins: int | float         # universal.min_proteins: a count, or a fraction of the proteins
    runtime: Runtime

    @property
    def layers(self) -> list[int]:
        """Every layer some analysis needs an SAE for, ascending."""
        return sorted(set(self.patching_layers) | set(self.ig_layers) | set(self.positions_layers)
                      | set(self.graph.layers))

    @property
    def agreement_layers(self) -> list[int]:
        """Layers with both exact patching and IG: where AtP is compared with them."""
        return sorted(set(self.patching_layers) & set(self.ig_layers))

    @property
    def wt_seqs(self) -> dict[str, str]:
        """Each configured protein's WT sequence, in the config's order."""
        return {name: protein.wt_seq for name, protein in self.proteins.items()}

    @property
    def sae_file_pattern(self) -> str:
        """The SAE file path with a ``{layer}`` wildcard."""
        return str(Path(self.sae_dir) / self.sae_pattern)

    @property
    def graph_pairs(self) -> list[tuple[int, int]]:
        """Consecutive layers of ``graph.layers``: (ℓ1, ℓ2)."""
        layers = sorted(self.graph.layers)
        return list(zip(layers[:-1], layers[1:], strict=True))

    def pair_settings(self, layer: int) -> PairSettings:
        """The graph job from `layer` to the next graph layer."""
        down = dict(self.graph_pairs)[int(layer)]
        g = self.graph
        return PairSettings(space=self.ig.space, max_edges=g.max_edges, check_edges=g.check_edges, hold=g.hold,
                            seed=g.seed, layer2=down, k2=self.sae_k[down])

    def layer_job(self, protein: str, layer: int) -> LayerJob:
        return LayerJob(protein=protein, wt_seq=self.proteins[protein].wt_seq, layer=int(layer),
                        k=self.sae_k[int(layer)], forward=self.forward)


def as_params(settings: Any) -> dict:
    """Settings as a plain dict for a rule's ``params``: Snakemake compares params by ``repr``
    and skips values it cannot represent, so a dataclass there would never trigger a rerun."""
    return dataclasses.asdict(settings)


def from_params(cls: type[S], data: dict) -> S:
    """Rebuild settings of type `cls` from :func:`as_params` output (nested settings included)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        value = data[field.name]
        kind = hints[field.name]
        inner = [t for t in typing.get_args(kind) if dataclasses.is_dataclass(t)] or (
            [kind] if dataclasses.is_dataclass(kind) else [])
        if inner and isinstance(value, dict):
            value = from_params(inner[0], value)
        values[field.name] = value
    return cls(**values)
