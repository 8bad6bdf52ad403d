"""Outputs are written atomically: a temporary file beside the target, then a rename; arrays are read back
with one clear error."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from esmsae.pipeline.errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over `path` on success.

    On any exception the temporary file is removed and `path` is left untouched,
    so a reader never sees a half-written output.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise InputError(f"{path.parent}: output folder is not writable ({err.strerror}); "
                         "check config key outdir") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table atomically, floats at full round-trip precision."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an npz file (no pickles); InputError naming the file if it is missing or unreadable.

    `what` names the file's kind in the message, e.g. ``IG results``.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"{path}: not a readable {what} file (truncated or corrupt?): {err}") from None


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (memory does not grow with the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
