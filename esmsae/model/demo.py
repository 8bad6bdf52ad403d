"""Tiny checkpoints in the real on-disk formats, for the offline demo and the tests.

The demo model is a randomly initialised fair-esm ``ESM2`` (same code, same
state-dict keys, same pickle layout as ``esm2_t33_650M_UR50D.pt``, only smaller),
so the loading code that reads it is the code that reads the real model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from esm.model.esm2 import ESM2

from esmsae.config.settings import (
    DemoSettings,
)
from esmsae.model.esm import (
    save_checkpoint,
)

EMBED_STD = 0.1


def tiny_esm2(num_layers: int = 4, embed_dim: int = 32, attention_heads: int = 4, seed: int = 0) -> ESM2:
    """A randomly initialised ESM-2 of the given shape, reproducible for a seed."""
    if embed_dim % attention_heads:
        raise ValueError(f"embed_dim {embed_dim} must be a multiple of attention_heads {attention_heads}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(num_layers=num_layers, embed_dim=embed_dim, attention_heads=attention_heads,
                     alphabet="ESM-1b", token_dropout=True)
        # PyTorch's default N(0, 1) embedding makes the tied LM head's logits
        # implausibly sharp; a smaller scale gives log-odds of the size real models give.
        with torch.no_grad():
            model.embed_tokens.weight.normal_(0.0, EMBED_STD)
            model.embed_tokens.weight[model.padding_idx] = 0.0
    return model.eval()


def write_tiny_esm2(path: str | Path, *, num_layers: int, embed_dim: int, attention_heads: int,
                    seed: int = 0) -> ESM2:
    """Build a tiny ESM-2 and save it as a fair-esm checkpoint at `path`."""
    model = tiny_esm2(num_layers, embed_dim, attention_heads, seed)
    save_checkpoint(model, path)
    return model


log = logging.getLogger("esmsae")


# -- rules ----------------------------------------------------------------------
def build_demo_model(demo: DemoSettings, checkpoint: str | Path) -> None:
    """Rule build_demo_model: a tiny random ESM-2 in fair-esm's format."""
    model = write_tiny_esm2(checkpoint, num_layers=demo.layers, embed_dim=demo.embed_dim,
                            attention_heads=demo.heads, seed=demo.seed)
    log.info("wrote a tiny ESM-2 (%d layers, width %d, %d heads) to %s", model.num_layers,
             model.embed_dim, model.attention_heads, checkpoint)
