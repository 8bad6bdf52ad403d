"""Settings of each analysis, checked on construction (no torch import here).

``esmsae.config`` builds these from the pipeline's config; the analyses take them
as arguments. Each error names the config key at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from esmsae.errors import InputError

SPACES = ("latent", "pre")
FEATURE_SETS = ("changed", "top_delta")
RULES = ("gausslegendre", "riemann_middle", "riemann_left", "riemann_right")
# captum 0.9.0's riemann_trapezoid puts n nodes 1/(n-1) apart but weights them 1/n,
# so its weights sum to 1 - 1/n and every attribution is scaled by that (0.8 at
# n = 5). It is refused until captum fixes it (tests/test_ig.py watches for that).
BIASED_RULES = ("riemann_trapezoid",)


@dataclass(frozen=True)
class SelectionSettings:
    """The ``mutations`` config block, with a protein's own ``max_dms`` applied."""

    source: str = "dms"
    max_dms: float | None = None
    n: int = 50
    seed: int = 0
    multi: bool = False


@dataclass(frozen=True)
class PatchSettings:
    """The ``patching`` config block plus the shared ``space`` and ``batch_size``."""

    space: str = "latent"
    features: str = "changed"
    n: int = 5
    seed: int = 0
    batch_size: int | None = None  # None: sized by the engine from free memory

    def __post_init__(self):
        if self.space not in SPACES:
            raise InputError(f"config key space: {self.space!r} is not one of {SPACES}")
        if self.features not in FEATURE_SETS:
            raise InputError(f"config key patching.features: {self.features!r} is not one of {FEATURE_SETS}")


@dataclass(frozen=True)
class IGSettings:
    """The ``ig`` config block plus the shared ``space`` and ``batch_size``."""

    steps: int = 32
    rule: str = "gausslegendre"
    space: str = "latent"
    error_node: bool = True
    batch_size: int | None = None  # None: sized by the engine from free memory

    def __post_init__(self):
        if self.rule in BIASED_RULES:
            raise InputError(f"config key ig.rule: captum's {self.rule} weights do not sum to 1 "
                             f"(a biased rule); use one of {RULES}")
        if self.rule not in RULES:
            raise InputError(f"config key ig.rule: {self.rule!r} is not one of {RULES}")
        if self.space not in SPACES:
            raise InputError(f"config key space: {self.space!r} is not one of {SPACES}")
        if self.steps < (1 if self.rule == "gausslegendre" else 2):
            raise InputError(f"config key ig.steps: {self.steps} is too few for rule {self.rule} "
                             "(Riemann rules need at least 2)")


@dataclass(frozen=True)
class CircuitSettings:
    """The ``circuits`` config block plus the shared ``space`` and ``batch_size``."""

    recover: float = 0.9
    max_k: int = 64
    space: str = "latent"
    batch_size: int | None = None  # None: sized by the engine from free memory

    def __post_init__(self):
        if not 0 < self.recover <= 1:
            raise InputError(f"config key circuits.recover: {self.recover} must be in (0, 1]")
        if self.max_k < 1:
            raise InputError(f"config key circuits.max_k: {self.max_k} must be >= 1")
