"""Warnings for the user: one line on stderr (``crysdiff: warning: ...``), each message once per process."""

from __future__ import annotations

import sys

__all__ = ["warn", "warn_once"]

_SAID: set[str] = set()


def warn(message: str) -> None:
    print(f"crysdiff: warning: {message}", file=sys.stderr)


def warn_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        warn(message)
