"""Raw records as they travel from :func:`crysdiff.io.plan` to worker processes, and file reading.

An :class:`Item` is one record not yet parsed (CIF text, a JSON dict, a file path...); a
:class:`BadItem` is a record that planning already found broken (a truncated extxyz frame,
a label row without a structure file). Both are plain picklable tuples.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from crysdiff.crystal import Notice, RecordError, label_from_text

__all__ = ["Item", "BadItem", "Notice", "note", "take_notes", "read_bytes", "read_text", "decode", "as_label",
           "short_reason"]


class Item(NamedTuple):
    """One raw record: where it is, its id, the payload for the format's parser, its labels."""

    record: str
    id: str
    payload: Any
    labels: dict


class BadItem(NamedTuple):
    """A record that :func:`plan` already knows is unusable; :func:`run_task` reports it."""

    record: str
    reason: str


_NOTES: list[Notice] = []


def note(source: str, record: str, reason: str) -> None:
    _NOTES.append(Notice(str(source), str(record), reason))


def take_notes() -> list[Notice]:
    """The notes made since the last call (and forget them)."""
    notes = list(_NOTES)
    _NOTES.clear()
    return notes


def read_bytes(path: str | Path, source: str | None = None, record: str = "*") -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic number.

    Raises:
        RecordError: ``(source, record, reason)`` for an empty file or a corrupt gzip stream.
    """
    source = str(path) if source is None else source
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RecordError(source, record, f"cannot read the file: {exc.strerror or exc}") from None
    if not data:
        raise RecordError(source, record, "the file is empty (0 bytes); expected crystal data")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise RecordError(
                source, record, f"corrupt or truncated gzip data ({type(exc).__name__}: {exc}); expected a valid .gz file"
            ) from None
        if not data.strip():
            raise RecordError(source, record, "the gzip file decompresses to nothing; expected crystal data")
    elif not data.strip():
        raise RecordError(source, record, "the file holds only whitespace; expected crystal data")
    return data


def decode(data: bytes, source: str, record: str = "*") -> str:
    """UTF-8 text (a BOM is dropped). Raises RecordError naming the first undecodable byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise RecordError(
            source,
            record,
            f"expected UTF-8 text, found the undecodable byte 0x{bad} at offset {exc.start} "
            "(re-save the file as UTF-8)",
        ) from None


def read_text(path: str | Path, source: str | None = None, record: str = "*") -> str:
    """The file as UTF-8 text (gzip handled); whole-file problems raise RecordError."""
    source = str(path) if source is None else source
    return decode(read_bytes(path, source, record), source, record)


def as_label(value: Any) -> float | None:
    """A scalar label value as float; "na"/empty/None -> NaN; non-numeric values (text, lists, bools) -> None."""
    if isinstance(value, bool) or value is None:
        return math.nan if value is None else None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return label_from_text(value)
    try:  # numpy scalars
        import numpy as np

        if isinstance(value, np.generic) and np.issubdtype(value.dtype, np.number):
            return float(value)
    except Exception:
        pass
    return None


def short_reason(exc: BaseException) -> str:
    """``"ExceptionClass: first line of the message"`` for error reasons (never a traceback)."""
    message = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {message[0][:300]}" if message else type(exc).__name__
