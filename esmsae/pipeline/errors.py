"""The one error type users see for bad inputs."""

from __future__ import annotations


class InputError(ValueError):
    """A problem with a user-supplied file, row or setting.

    The message always names the file, row or config key at fault, so that a
    pipeline log shows one line that says what is wrong and where.
    """
