"""Hand-made mutant views for the analyses' unit tests (a helper, not tests).

A :class:`~esmsae.model.view.MutantView` over a stand-in engine with no model: the WT and mutant codes
are small hand-written tensors, and the score is linear,

    S(z', e') = S(m) + Σ_sites Σ_j c[s, j] (z'_sj − z_wt_sj) + Σ_sites ⟨e'_s − e_wt_s, w[s]⟩,

so an effect, an attribution or a curve point is a sum the test can work out by hand. In ``pre``
space the engine re-applies TopK (keep the k largest, ReLU them) as the real SAE does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from esmsae.inputs.mutations import parse_mutant
from esmsae.model.code import SiteCode
from esmsae.model.splice import Effects, ScoreSpec
from esmsae.model.view import MutantView

SEQ = "MKVLAGWERT"  # residues 1..10; sites are written against it (e.g. "K2A:G6W")


def tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


class LinearEngine:
    """The engine's interface as the analyses use it, with the linear score above."""

    protein, layer = "P", 1

    def __init__(self, weights, error_weights=None, base: float = -2.0, k: int = 2):
        self.weights = tensor(weights)  # c (S, d_sae)
        self.error_weights = None if error_weights is None else tensor(error_weights)  # w (S, d)
        self.base, self.k = base, k

    def topk(self, pre: torch.Tensor) -> torch.Tensor:
        top = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def latents(self, values: torch.Tensor, space: str) -> torch.Tensor:
        return values if space == "latent" else self.topk(values)

    def score(self, wt: SiteCode, z: torch.Tensor, error_delta: torch.Tensor | None = None) -> torch.Tensor:
        change = ((z - wt.z) * self.weights).sum((-2, -1))
        if error_delta is not None:
            change = change + (error_delta * self.error_weights).sum((-2, -1))
        return self.base + change

    def effects(self, wt: SiteCode, z: torch.Tensor, spec: ScoreSpec, error_delta=None) -> Effects:
        scores = self.score(wt, z, error_delta)
        baseline = torch.full_like(scores, self.base)
        return Effects(scores=scores, baseline=baseline, effects=scores - baseline)

    def differentiate(self, wt: SiteCode, spec: ScoreSpec, space: str, use):
        return use(lambda values, error_delta=None: self.score(wt, self.latents(values, space), error_delta))


def code(pre, z=None, error=None, positions=None) -> SiteCode:
    """A site code from per-site rows; `z` defaults to `pre` (already a TopK output), `error` to zeros."""
    pre = tensor(pre)
    z = pre.clone() if z is None else tensor(z)
    error = torch.zeros(pre.shape[0], 2) if error is None else tensor(error)
    positions = torch.arange(1, pre.shape[0] + 1) if positions is None else torch.as_tensor(positions)
    return SiteCode(positions=positions, pre=pre, z=z, error=error, mu=torch.zeros(pre.shape[0], 1),
                    sigma=torch.ones(pre.shape[0], 1))


def stub_view(mutant: str, wt: SiteCode, mut: SiteCode, engine: LinearEngine, space: str = "latent") -> MutantView:
    """The view of `mutant` (written against SEQ) with hand-made codes and the linear engine."""
    m = parse_mutant(mutant, SEQ)
    spec = ScoreSpec(positions=torch.tensor([s.pos for s in m.sites]), wt=torch.zeros(len(m.sites), dtype=torch.long),
                     mut=torch.zeros(len(m.sites), dtype=torch.long))
    return MutantView(engine=engine, mutant=m, space=space, wt=wt, mut=mut, spec=spec)


REPO = Path(__file__).resolve().parents[1]


def rule_block(rule: str) -> str:
    """The text of Snakemake rule `rule` in rules/*.smk (up to the next rule)."""
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        start = text.find(f"\nrule {rule}:\n")
        if start >= 0:
            end = text.find("\nrule ", start + 1)
            return text[start:end if end >= 0 else len(text)]
    raise AssertionError(f"no rule {rule} in rules/")


def runs_analysis(rule: str, name: str) -> bool:
    """Whether rule `rule`'s script runs the analysis published as `name` (e.g. PATCHING)."""
    script = rule_block(rule).split("script:")[1].split('"')[1]
    return f"run_analysis({name}," in (REPO / "rules" / script).resolve().read_text()


# The two-site case every analysis test shares: mutant K2A:G6W, d_sae = 6, k = 2 (sites s1 = K2, s2 = G6).
#
#            feature:   0     1     2     3     4     5
WT_PRE = [[1.0, 2.0, 0.25, -1.0, 0.5, -2.0],    # s1 TopK: f1 2, f0 1
          [0.75, 3.0, 0.25, 2.0, -1.0, 0.0]]    # s2 TopK: f1 3, f3 2
WT_Z = [[1.0, 2.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 3.0, 0.0, 2.0, 0.0, 0.0]]
MUT_PRE = [[1.0, 3.0, 0.25, -1.0, 0.5, -1.0],   # s1 TopK: f1 3, f0 1
           [0.75, 1.5, 0.25, 1.0, 2.5, 0.0]]    # s2 TopK: f4 2.5, f1 1.5
MUT_Z = [[1.0, 3.0, 0.0, 0.0, 0.0, 0.0],
         [0.0, 1.5, 0.0, 0.0, 2.5, 0.0]]
# Δpre = s1 [0, +1, 0, 0, 0, +1], s2 [0, −1.5, 0, −1, +3.5, 0]:
#   Σ_sites |Δpre| = [0, 2.5, 0, 1, 3.5, 1]   (|Σ_sites Δpre| would be [0, 0.5, 0, 1, 3.5, 1])
# Δz   = s1 [0, +1, 0, 0, 0, 0],   s2 [0, −1.5, 0, −2, +2.5, 0]:
#   Σ_sites |Δz| = [0, 2.5, 0, 2, 2.5, 0]     (|Σ_sites Δz| would be [0, 0.5, 0, 2, 2.5, 0])
# Changed set {1, 3, 4} (f1 moves up at s1 and down at s2); active in WT or mutant {0, 1, 3, 4}: f0's
# largest latent is exactly 1, and f2, f5 sit exactly at the bar z = 0 (f5's pre moves, its latent does not).
WEIGHTS = [[2.0, 4.0, 8.0, 16.0, 32.0, 64.0],   # c[s1, j]
           [6.0, 4.0, 10.0, 3.0, 4.0, 14.0]]    # c[s2, j]
# Latent-space single-feature effects Σ_s c[s, j] Δz_sj: f1 4·1 + 4·(−1.5) = −2, f3 3·(−2) = −6, f4 4·2.5 = 10;
# all of them together F = 2. S(m) = BASE = −2.
WT_ERROR = [[0.5, -1.0], [0.0, 0.25]]
MUT_ERROR = [[1.5, -1.0], [-1.0, 0.25]]         # ẽ_mut − e_wt = s1 [1, 0], s2 [−1, 0]
ERROR_WEIGHTS = [[2.0, 7.0], [3.0, 5.0]]        # A_err = 1·2 + (−1)·3 = −1
BASE = -2.0


def two_site_view(space: str = "latent", scale: float = 1.0, mutant: str = "K2A:G6W") -> MutantView:
    """The shared case, its score weights multiplied by `scale`."""
    engine = LinearEngine([[scale * c for c in row] for row in WEIGHTS], ERROR_WEIGHTS, base=BASE, k=2)
    return stub_view(mutant, code(WT_PRE, WT_Z, WT_ERROR, [2, 6]), code(MUT_PRE, MUT_Z, MUT_ERROR, [2, 6]),
                     engine, space)
