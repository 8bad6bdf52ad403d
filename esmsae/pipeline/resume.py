"""Resumable per-mutant work for long GPU jobs.

A job that is killed (time limit, preemption, node failure, ``scancel``, a crash)
loses nothing it finished: each mutant's result is written, as soon as it is
done, into a work folder beside the declared output::

    results/study/patching/EPHB2_HUMAN_L16.csv.work/<fingerprint>/00003.pkl

The fingerprint hashes everything that decides the numbers (rule, science
settings, mutant list, input files, package version and the pieces' format),
never a runtime knob such as the batch size. A restarted job with the same
fingerprint reuses the pieces; pieces under any other fingerprint are stale and
removed. The declared output is assembled at the end, written atomically, and
the work folder deleted. Snakemake removes the declared outputs of a failed job,
never this folder, which is what lets the retry pick up where the job stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from esmsae import __version__
from esmsae.pipeline.io import atomic_path, sha256_of

log = logging.getLogger(__name__)


T = TypeVar("T")


# Pieces are pickled typed results: bump this when a result type changes, so that a job never
# resumes from pieces of an older shape.
PIECES_FORMAT = 4


def file_identity(path: str | os.PathLike, *, hash_below: int = 64 << 20) -> dict:
    """What identifies an input file: its content hash when small, else size and modification time."""
    path = Path(path)
    stat = path.stat()
    ident = {"path": str(path), "size": stat.st_size}
    if stat.st_size <= hash_below:
        ident["sha256"] = sha256_of(path)
    else:
        ident["mtime_ns"] = stat.st_mtime_ns
    return ident


def fingerprint(**parts) -> str:
    """A short stable hash of JSON-able parts (settings, file identities, mutant names)."""
    text = json.dumps({"esmsae": __version__, "pieces": PIECES_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class WorkFolder:
    """Per-item pieces of one output, kept across restarts of the job that makes it."""

    def __init__(self, output: str | os.PathLike, key: str, keep: bool = False):
        self.root = Path(f"{output}.work")
        self.dir = self.root / key
        self.keep = keep  # finish() leaves the pieces: a job rerun whole (a SLURM group) reloads them
        if self.root.is_dir():
            for stale in self.root.iterdir():
                if stale != self.dir:
                    log.info("removing stale work from other settings or inputs: %s", stale)
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, index: int) -> Path:
        return self.dir / f"{index:05d}.pkl"

    def load(self, index: int, name: str):
        """The piece for item `index` if it exists and belongs to `name`, else None."""
        path = self._path(index)
        if not path.is_file():
            return None
        try:
            with path.open("rb") as fh:
                stored_name, value = pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
            log.warning("ignoring unreadable piece %s (%s)", path, err)
            return None
        return value if stored_name == name else None

    def save(self, index: int, name: str, value) -> None:
        with atomic_path(self._path(index)) as tmp:
            with tmp.open("wb") as fh:
                pickle.dump((name, value), fh, protocol=pickle.HIGHEST_PROTOCOL)

    def finish(self) -> None:
        """The output is written: its pieces go, unless they are kept (``keep_pieces``)."""
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def run_items(names: Sequence[str], compute: Callable[[int], T], work: WorkFolder | None,
              desc: str = "mutants") -> list[T]:
    """``compute(i)`` for every item, reusing finished pieces from `work` and saving new ones."""
    done = [work.load(i, name) if work else None for i, name in enumerate(names)]
    n_done = sum(piece is not None for piece in done)
    if work:
        log.info("resume: %d of %d mutants already done in %s (%s)", n_done, len(names), work.dir, desc)
    results: list[T] = []
    with tqdm(total=len(names), initial=n_done, desc=desc, file=sys.stderr, mininterval=5.0,
              disable=False) as bar:
        for i, name in enumerate(names):
            if done[i] is not None:
                results.append(done[i])
                continue
            value = compute(i)
            if work:
                work.save(i, name, value)
            results.append(value)
            bar.update(1)
            log.info("%s %d/%d done: %s", desc, i + 1, len(names), name)
    return results
