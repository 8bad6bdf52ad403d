"""Matmuls whose rows do not depend on how many rows share the call.

CPU BLAS (MKL) computes a matmul row with a different kernel, and so a different
rounding, when the call has only a few rows per thread: measured with torch
2.13's MKL on an AMD EPYC, any call of up to 3 rows at 1 to 4 threads, up to 11 at
8, 27 at 16 and 51 at 32. Where a matmul may see that few rows (the LM head at the
scored positions, the SAE at the mutated sites), its input is padded with zero rows
to `MIN_ROWS` and the result cut back. On an Intel Xeon with AVX-512 the switch
reaches hundreds of rows at 2 threads, the blocks' calls included, which no padding
covers cheaply; there MKL's strict reproducibility mode does it
(:func:`esmsae.model.host.reproducible_blas`, set by every job).
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_ROWS = 64


def pad_rows(x: Tensor, dim: int, rows: int) -> Tensor:
    """`x` with zero rows appended along `dim` until it has at least `rows`."""
    missing = rows - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w`` for `x` (..., n) and `w` (n, m), each row as it would be in a large batch."""
    flat = x.reshape(-1, x.shape[-1])
    out = pad_rows(flat, 0, MIN_ROWS) @ w
    return out[: flat.shape[0]].reshape(*x.shape[:-1], w.shape[-1])
