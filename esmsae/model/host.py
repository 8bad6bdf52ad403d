"""Process-wide settings for the host (CPU) side of a run.

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
import platform

import torch

log = logging.getLogger(__name__)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


# Blocks up to this size come from the heap; mallopt takes a C int.
MMAP_ABOVE = 1 << 30


NEVER_TRIM = 2**31 - 1


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
    """The rule's thread count for torch, and freed memory held for reuse (see esmsae.model.host)."""
    torch.set_num_threads(max(1, int(threads)))
    hold_freed_memory()
