"""The engine's one batching policy: how a batch of interventions is cut into passes of the upper layers.

Every analysis hands the engine a batch of residual changes and a readout; :class:`Passes`
decides how they run:

* identical rows are run once and share one result, and a row whose change is exactly zero is
  not run at all (it leaves ``h`` bit-identical, so its result is the baseline);
* each chunk carries one unmodified row first, and results are measured against it, so a no-op
  is exactly 0.0;
* rows per pass: fixed on CPU (``CPU_ROWS``), sized from the free memory on CUDA, or the
  configured ``batch_size``; halved and retried when a pass runs out of memory, the smaller
  size kept for the rest of the job;
* with gradients (IG), passes are checkpointed, so memory is that of one pass whatever the batch.

A row's numbers do not depend on how many rows share its pass (see :mod:`esmsae.model.rows`), so
none of this changes a number: the batch size is a speed knob only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from esmsae.model.esm import EsmLM

log = logging.getLogger(__name__)
T = TypeVar("T")

# Interventions per pass on CPU (fixed: free memory is no constraint there), and the most per
# pass anywhere.
CPU_ROWS, MAX_ROWS = 128, 1024
# Share of the GPU's free memory a batch may plan to use.
MEMORY_SHARE = 0.5


def free_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


class Passes:
    """Rows per pass of the upper layers of `lm` above `layer`, for sequences of `tokens` tokens.

    `batch_size` (None: sized from free memory) is the runtime knob; the sizes found are kept per
    kind of pass (without and with gradients).
    """

    def __init__(self, lm: EsmLM, layer: int, tokens: int, batch_size: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lm, self.layer, self.tokens, self.batch_size = lm, layer, tokens, batch_size
        self._rows: dict[bool, int] = {}  # rows per pass, without and with gradients, once sized

    def rows_per_pass(self, grad: bool = False) -> int:
        """How many interventions one pass of the upper layers can take without running out of memory.

        On CUDA: a share of the free memory over an estimate of one row's activations
        through blocks ℓ+1..N (all of them kept when `grad`, for IG; the largest
        block's otherwise). On CPU a fixed number, so results do not depend on the
        machine's momentary free memory.
        """
        if self.lm.device.type != "cuda":
            return CPU_ROWS
        t, e = self.tokens, self.lm.embed_dim
        heads = self.lm.model.attention_heads
        per_block = t * 16 * e + 3 * heads * t * t  # q, k, v, attention scores and softmax, MLP, norms
        blocks = max(1, self.lm.num_layers - self.layer) if grad else 1
        per_row = (blocks * per_block + 2 * t * e) * torch.finfo(self.lm.dtype).bits // 8 * 2
        rows = int(MEMORY_SHARE * free_memory(self.lm.device) // per_row)
        return max(1, min(MAX_ROWS, rows))

    def rows(self, grad: bool) -> int:
        """The rows per pass in use now."""
        if grad not in self._rows:
            self._rows[grad] = self.batch_size or self.rows_per_pass(grad=grad)
        return self._rows[grad]

    def halving(self, attempt: Callable[[int], T], grad: bool) -> T:
        """``attempt(rows)`` with the current rows per pass; on running out of memory, halve and try again.

        The engine's one out-of-memory policy. The smaller size is kept for the rest of the
        job. Results do not depend on it (a row's numbers do not depend on its pass).
        """
        while True:
            rows = self.rows(grad)
            try:
                return attempt(rows)
            except torch.OutOfMemoryError:
                if rows <= 1:
                    raise
                self._rows[grad] = max(1, rows // 2)
                log.warning("out of memory%s: retrying with %d rows per pass", " (gradients)" if grad else "",
                            self._rows[grad])
                if self.lm.device.type == "cuda":
                    torch.cuda.empty_cache()

    def batched(self, deltas: Tensor, readout: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """``readout`` of B residual changes `deltas` (B, S, d), and of the unmodified run beside each.

        Identical rows are run once and share one result, and a row whose change is exactly zero is
        not run at all: it leaves ``h`` bit-identical, so its result is the baseline. Each chunk
        carries one unmodified row first and results are measured against it. So a no-op is
        exactly 0.0 and equal interventions give equal numbers on any hardware, where re-running
        them at other rows of a batched matmul could differ in the last bit on a GPU. Chunks are
        as large as a pass may be (:meth:`halving`).
        """
        if deltas.shape[0] == 0:
            with torch.no_grad():
                empty = readout(deltas.new_zeros((1, *deltas.shape[1:])))[:0]  # only its shape is used
            return empty, empty
        flat = deltas.flatten(1)
        unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
        todo = torch.nonzero(unique.ne(0).any(-1)).flatten()  # unique rows that change h
        out = base = first_base = None
        with torch.no_grad():
            start = 0
            while start < max(len(todo), 1):
                def chunk(rows: int, start: int = start) -> tuple[Tensor, Tensor]:
                    part = todo[start:start + rows]
                    batch = torch.cat([torch.zeros_like(unique[:1]), unique[part]]).reshape(-1, *deltas.shape[1:])
                    return part, readout(batch)

                part, values = self.halving(chunk, grad=False)
                if out is None:
                    out = values.new_empty((len(unique), *values.shape[1:]))
                    base = values.new_empty((len(unique), *values.shape[1:]))
                    first_base = values[0]
                out[part], base[part] = values[1:], values[0]
                start += max(len(part), 1)
        idle = torch.ones(len(unique), dtype=torch.bool, device=deltas.device)
        idle[todo] = False
        out[idle] = first_base
        base[idle] = first_base
        return out[inverse], base[inverse]


def in_passes(run: Callable[[Tensor], Tensor], delta: Tensor, rows: int) -> Tensor:
    """``run`` over all B rows of `delta`, at most `rows` per call.

    With gradients on (IG), each pass is checkpointed: only its input is kept, and its
    activations are recomputed in the backward pass one pass at a time, so memory is that of
    `rows` rows whatever B is. The rows come out as they would from one pass (a row's numbers do
    not depend on its pass).
    """
    if rows < 1:
        raise ValueError("rows must be >= 1")
    if delta.shape[0] <= rows:
        return run(delta)
    passes = delta.split(rows)
    if torch.is_grad_enabled():
        return torch.cat([checkpoint(run, part, use_reentrant=False) for part in passes])
    return torch.cat([run(part) for part in passes])
