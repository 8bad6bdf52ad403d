"""Shared fixtures: a tiny ESM-2 and tiny SAEs in the real on-disk formats, built once per session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from esmsae.config.parse import load
from esmsae.config.settings import Forward
from esmsae.model.demo import write_tiny_esm2
from esmsae.model.esm import EsmLM, load_esm
from esmsae.model.host import reproducible_blas
from esmsae.model.sae import load_sae, random_sae, save_sae
from esmsae.model.splice import Splice

REPO = Path(__file__).resolve().parents[1]
SHARED_DMS = REPO.parent / "shared" / "data" / "proteingym"
needs_dms = pytest.mark.skipif(not SHARED_DMS.is_dir(), reason=f"ProteinGym files not found at {SHARED_DMS}")

# The study's real WT sequences (ProteinGym target_seq).
WT = {
    "EPHB2_HUMAN": "SFNTVDEWLEAIKMGQYKESFANAGFTSFDVVSQMMMEDILRVGVTLAGHQKKILNSIQVMRAQMN",
    "DNJA1_HUMAN": "TTYYDVLGVKPNATQEELKKAYRKLALKYHPDKNPNEGEKFKQISQAYEVLSDAKKRELYDKGGE",
    "PR40A_HUMAN": "TYTWNTKEEAKQAFKELLKEKRVPSNASWEQAMKMIINDPRYSALAKLSEKKQAFNAYKVQTE",
}
DMS_FILES = {
    "EPHB2_HUMAN": "EPHB2_HUMAN_Tsuboyama_2023_1F0M.csv",
    "DNJA1_HUMAN": "DNJA1_HUMAN_Tsuboyama_2023_2LO1.csv",
    "PR40A_HUMAN": "PR40A_HUMAN_Tsuboyama_2023_1UZC.csv",
}



def pytest_configure(config):
    # As every job does before its first matmul (esmsae.model.host.set_up_host).
    reproducible_blas()
    # Tiny models are fastest on one thread, and extra threads stall when the
    # machine's cores are busy (each op then waits on a thread barrier).
    torch.set_num_threads(1)


TINY = {"num_layers": 4, "embed_dim": 32, "attention_heads": 4}
D_SAE, K = 96, 8
LAYERS = list(range(1, TINY["num_layers"] + 1))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder with a tiny fair-esm checkpoint and one SAE file per layer."""
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_esm2(folder / "esm2_tiny.pt", seed=1, **TINY)
    for layer in range(1, TINY["num_layers"] + 1):
        save_sae(random_sae(TINY["embed_dim"], D_SAE, K, seed=layer), folder / f"sae_l{layer}.safetensors")
    return folder


@pytest.fixture(scope="session")
def lm(tiny_dir) -> EsmLM:
    torch.manual_seed(0)
    return EsmLM(load_esm(tiny_dir / "esm2_tiny.pt"), "cpu", activations="fair-esm")


# The two forwards a study can run on (METHOD.md "Which forward the SAEs read"); the `lm` fixture's, as
# entry points take it.
FORWARDS = ("interprot", "fair-esm")
FAIR_ESM = Forward(precision="fp32", activations="fair-esm")


@pytest.fixture(scope="session")
def lms(lm) -> dict[str, EsmLM]:
    """The tiny model on each forward (the same weights)."""
    return {forward: lm.on(forward) for forward in FORWARDS}


@pytest.fixture(scope="session")
def saes(tiny_dir, lm):
    return {layer: load_sae(tiny_dir / f"sae_l{layer}.safetensors", K, layer=layer, d_in=lm.embed_dim)
            for layer in range(1, lm.num_layers + 1)}


# The schema's defaults, as the pipeline gets them: tests change only what they test.
DEFAULTS = load({
    "outdir": "unused", "esm_checkpoint": "unused", "sae": {"dir": "unused", "pattern": "l{layer}", "k": K},
    "proteins": {"P": {"wt_seq": "MKV"}}, "mutations": {"source": "model"},
    "patching": {"layers": [1]}, "ig": {"layers": [1]},
})


def patch_settings(**changes):
    return dataclasses.replace(DEFAULTS.patching, **changes)


def ig_settings(**changes):
    return dataclasses.replace(DEFAULTS.ig, **changes)


def circuit_settings(**changes):
    return dataclasses.replace(DEFAULTS.circuits, **changes)


def circuit_size_settings(**changes):
    return dataclasses.replace(DEFAULTS.circuit_sizes, **changes)


def watch_passes(monkeypatch, splice, fits: int | None = None) -> list[tuple[int, bool]]:
    """Record each pass `splice.run` makes as (rows, gradients on); with `fits`, a pass of more
    rows raises a simulated out-of-memory error instead of running."""
    real_run, passes = splice.run, []

    def watched(positions, delta, spec):
        passes.append((delta.shape[0], torch.is_grad_enabled()))
        if fits is not None and delta.shape[0] > fits:
            raise torch.OutOfMemoryError("simulated")
        return real_run(positions, delta, spec)

    monkeypatch.setattr(splice, "run", watched)
    return passes


def splice_every_layer(lm, saes, seq: str) -> dict:
    """The tiny model with its SAE spliced in at every layer, for one WT sequence."""
    return {layer: Splice(lm, saes[layer], seq, layer) for layer in LAYERS}


def mutant_states(splice, mutant) -> torch.Tensor:
    """The mutant's own layer-ℓ states at its sites, (S, d)."""
    return splice.hidden([mutant.apply(splice.wt_seq)])[0, [s.pos for s in mutant.sites]]


def view_of(splice, mutant, h: torch.Tensor | None = None, space: str = "latent"):
    """The engine's view of `mutant` (its states `h` at the sites, computed when not given)."""
    return splice.view(mutant, mutant_states(splice, mutant) if h is None else h, space)
