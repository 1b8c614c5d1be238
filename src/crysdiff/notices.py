"""Warnings for the user: one line on stderr (``crysdiff: warning: ...``), each message once per process."""

from __future__ import annotations

import sys

__all__ = ["warn_once"]

_SAID: set[str] = set()


def warn_once(message: str) -> None:
    if message in _SAID:
        return
    _SAID.add(message)
    print(f"crysdiff: warning: {message}", file=sys.stderr)
