"""Process-wide settings for the host (CPU) side of a run: reproducible BLAS, and freed memory held.

**Reproducible BLAS.** A row's numbers must not depend on how many rows share its matmul, or
the batch size would change results. Intel MKL (PyTorch's CPU BLAS on x86) picks its GEMM
kernel by the row count: measured with torch 2.13 on an Intel Xeon with AVX-512 at the 650M
shape, a row of an fc2 matmul (5120 -> 1280) differs in the last bits when the call has up to
15 rows at 1 thread and up to 584 at 2 threads (at 8 threads calls of 476 rows still
differ; the blocks see B·T rows, 68 per intervention), so a pass of 7 interventions
disagreed with one of 64 by 7e-6. MKL's strict
conditional numerical reproducibility (``MKL_CBWR=AUTO,STRICT``) removes that: every row equal
at every row count tried (1..6,500) at 1, 2, 4 and 8 threads, at no measured cost (282 ms for an
fc1 + fc2 pair at 4,352 rows either way). MKL reads the variable at its first call, so
:func:`reproducible_blas` must run before any matmul: :func:`set_up_host` does it first thing in
every job. A value the user set is kept (with a warning if it is not strict).

A batched pass on the CPU allocates intermediates of tens of MB (the MLP's
input for B rows of T tokens). glibc serves blocks that large with mmap and
hands them back to the OS when they are freed, so every pass pays again for
page faults on fresh memory: measured on a 2-core machine with the 35M shape,
a pass took 16 ms per row with freed memory held and 21–30 ms without,
depending on the process. Holding it keeps passes at the fast figure; the
price is that the process does not shrink after its peak.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

import torch

log = logging.getLogger(__name__)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


# Blocks up to this size come from the heap; mallopt takes a C int.
MMAP_ABOVE = 1 << 30


NEVER_TRIM = 2**31 - 1


# MKL's strict CNR with the best code path for the CPU (see the module docstring).
REPRODUCIBLE_BLAS = "AUTO,STRICT"


def reproducible_blas() -> str:
    """Ask MKL for GEMM rows that do not depend on the row count (before any matmul); returns MKL_CBWR."""
    value = os.environ.setdefault("MKL_CBWR", REPRODUCIBLE_BLAS)
    if "STRICT" not in value.upper():
        log.warning("MKL_CBWR=%s is not strict: on CPUs where MKL chooses kernels by row count, numbers may "
                    "move in the last bits with batch_size", value)
    return value


def hold_freed_memory() -> bool:
    """Ask glibc to keep large freed blocks for reuse; False (and nothing changed) elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    held = bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    if not held:
        log.warning("glibc refused mallopt; large freed blocks go back to the OS (slower CPU passes)")
    return held


def set_up_host(threads: int) -> None:
    """Reproducible BLAS, the rule's thread count for torch, and freed memory held for reuse."""
    reproducible_blas()
    torch.set_num_threads(max(1, int(threads)))
    hold_freed_memory()
