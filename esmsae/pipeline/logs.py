"""A rule's log: the package's log lines go to the rule's log file, and a bad input ends the job with one line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from esmsae.pipeline.errors import InputError

log = logging.getLogger("esmsae")


@contextmanager
def log_to(path: str | Path) -> Iterator[logging.Logger]:
    """Send the package's log to a rule's log file; record a failure there before re-raising."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield log
    except InputError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:
        log.exception("failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
