"""The reference every engine test compares with: fair-esm's own forward, with a hook where needed.

A forward hook on fair-esm's module replaces ``h_ℓ`` at chosen token positions, so these
checks share no code with the engine under test.
"""

from __future__ import annotations

import torch


def hooked_logits(lm, seq: str, layer: int, replace: dict[int, torch.Tensor]) -> torch.Tensor:
    """fair-esm's own forward with ``h_ℓ`` at token positions replaced (a hook on its module)."""
    model = lm.model
    module = model.layers[layer - 1] if layer < model.num_layers else model.emb_layer_norm_after

    def hook(_module, _inputs, output):
        x = output[0] if isinstance(output, tuple) else output  # (T, B, E)
        x = x.clone()
        for pos, vec in replace.items():
            x[pos, 0] = vec
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(lm.tokenize([seq]))["logits"][0]
    finally:
        handle.remove()


def score_from_logits(logits: torch.Tensor, lm, mutant) -> float:
    """The WT-marginal score of `mutant` from one sequence's logits (T, V), written out by hand."""
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[s.pos, lm.token_index(s.mut)] - logp[s.pos, lm.token_index(s.wt)]) for s in mutant.sites)
