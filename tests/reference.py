"""The reference every engine test compares with: fair-esm's own forward, with a hook where needed.

A forward hook on fair-esm's module replaces ``h_ℓ`` at chosen token positions, so these
checks share no code with the engine under test.
"""

from __future__ import annotations

import torch


def hooked_logits(lm, seq: str, layer: int, replace: dict[int, torch.Tensor],
                  window: tuple[int, int] | None = None) -> torch.Tensor:
    """fair-esm's own forward with ``h_ℓ`` at token positions replaced (a hook on its module); with `window`,
    on the token slice ``[start, end)`` (positions in `replace` and the result are the slice's)."""
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
            tokens = lm.tokenize([seq])
            return model(tokens if window is None else tokens[:, window[0]:window[1]])["logits"][0]
    finally:
        handle.remove()


def score_from_logits(logits: torch.Tensor, lm, mutant) -> float:
    """The WT-marginal score of `mutant` from one sequence's logits (T, V), written out by hand."""
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[s.pos, lm.token_index(s.mut)] - logp[s.pos, lm.token_index(s.wt)]) for s in mutant.sites)


def interprot_forward(model, tokens: torch.Tensor, layer: int | None = None,
                      replace: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward the Adams et al. SAEs were trained on, written out the way InterProt's
    ``get_layer_activations``/``get_sequence`` compute it: token embeddings unscaled (no token-dropout
    rescaling), the blocks, ``h_ℓ`` the output of block ℓ (for ℓ = N before the final norm), then the
    final layer norm and the LM head. With `replace`, ``h_layer`` at those token positions is replaced
    (batch row 0). Returns ``(h_layer or None, logits)``; shares no code with the engine."""
    with torch.no_grad():
        x = (model.embed_scale * model.embed_tokens(tokens)).transpose(0, 1)  # (T, B, E)
        h = None
        for index, block in enumerate(model.layers, start=1):
            x, _ = block(x, self_attn_padding_mask=None, need_head_weights=False)
            if index == layer:
                if replace:
                    x = x.clone()
                    for pos, vec in replace.items():
                        x[pos, 0] = vec
                h = x.transpose(0, 1)
        logits = model.lm_head(model.emb_layer_norm_after(x).transpose(0, 1))
    return h, logits


def reference_logits(lm, seq: str, layer: int, replace: dict[int, torch.Tensor]) -> torch.Tensor:
    """`lm`'s own forward, independently, with ``h_ℓ`` replaced at token positions: fair-esm's hooked
    forward, or InterProt's written out (one sequence's logits, (T, V))."""
    if lm.activations == "fair-esm":
        return hooked_logits(lm, seq, layer, replace)
    return interprot_forward(lm.model, lm.tokenize([seq]), layer, replace)[1][0]
