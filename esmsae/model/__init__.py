"""ESM-2 and the SAEs: strict loading, the model cut at a layer, and the intervention engine.

``esm`` (the checkpoint and the model's two halves), ``sae`` (the TopK SAE), ``training``
(fitting one), ``activations`` (residual vectors of many sequences), ``code`` (the SAE's
reading at the sites), ``splice`` (the engine for one WT sequence), ``batching`` (its one
batching policy), ``view`` (the mutant view every analysis gets), ``pair`` (the two-SAE
splice), ``rows`` (batch-independent matmuls), ``demo`` (tiny checkpoints), ``host`` (CPU
set-up of a job).
"""
