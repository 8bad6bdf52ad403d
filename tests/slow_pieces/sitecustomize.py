"""Test support, never imported by the pipeline: slow down every finished piece of a resumable job.

With this folder on PYTHONPATH, Python imports this module at start-up in every process
(Snakemake and the jobs it starts). When ``esmsae.pipeline.resume`` is first imported, its
``WorkFolder.save`` is wrapped to sleep ``SLOW_PIECES_SECONDS`` after each piece is written,
so a test can kill a job (SIGKILL, a SLURM time limit) between two finished mutants.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time

SECONDS = float(os.environ.get("SLOW_PIECES_SECONDS", "0") or 0)
TARGET = "esmsae.pipeline.resume"


class _SlowPieces(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module with the ordinary finders
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            save = module.WorkFolder.save

            def slow_save(self, *args, **kwargs):
                save(self, *args, **kwargs)
                time.sleep(SECONDS)

            module.WorkFolder.save = slow_save

        spec.loader.exec_module = exec_module
        return spec


if SECONDS > 0:
    sys.meta_path.insert(0, _SlowPieces())
