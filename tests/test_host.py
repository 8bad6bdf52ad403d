"""The host set-up every pipeline job runs before its work."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from esmsae.model.host import hold_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and frees a 64 MiB and a 16 MiB tensor five times, as passes do, and prints the page
# faults of the last round (each fault is a page of fresh memory) and torch's thread count.
PROBE = """
import resource, torch
from esmsae.analyses.job import run_analysis  # noqa: F401 (what a job imports before its set-up)
from esmsae.model.host import set_up_host
if SET_UP:
    set_up_host(1)
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x, y = torch.ones(16 * 2**20), torch.ones(4 * 2**20)
    del x, y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, torch.get_num_threads())
"""


def probe(set_up: bool) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", f"SET_UP = {set_up}\n" + PROBE], capture_output=True, text=True,
                         check=True)
    new, threads = out.stdout.split()
    return int(new), int(threads)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_set_up_host_keeps_freed_blocks_for_reuse():
    """Without the set-up every round lands on fresh pages; with it, a round reuses the last one's."""
    assert probe(set_up=False)[0] >= 1000  # 64 MiB is 16384 pages of 4 KiB, fewer with huge pages
    faults, threads = probe(set_up=True)
    assert faults < 100 and threads == 1


def test_hold_freed_memory_reports_what_it_did():
    assert hold_freed_memory() is GLIBC
