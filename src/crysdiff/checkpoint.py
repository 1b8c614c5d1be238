"""Self-describing checkpoints.

A crysdiff checkpoint is a ``torch.save`` of plain containers (no pickled classes), loaded with
``weights_only=True`` so opening a file never executes code from it::

    {
      "format": "crysdiff", "format_version": 1, "crysdiff_version": "0.1.0",
      "kind": "pretrain" | "finetune",
      "config": {...},             # the run's full config as a plain dict (the model's own config inside)
      "state_dict": {...},         # model weights
      "buffers": {...},            # non-learnable constants that must travel (e.g. λ_t of the score)
      "normalizer": {...},         # fine-tuning: target name, unit, mean, std (outputs are de-standardised)
      "data": {...},               # a summary of the training data (sources, counts)
      "metrics": {...},            # validation metrics at save time
    }

Writes are atomic (temporary file + ``os.replace``): an interrupted save never corrupts an earlier
checkpoint. In a distributed run only global rank 0 writes (every rank holds the same weights).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "RefusedCheckpoint", "save_checkpoint", "load_checkpoint", "read_plain", "FORMAT_VERSION"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable crysdiff checkpoint."""


class RefusedCheckpoint(CheckpointError):
    """A file crysdiff will not load at all: unreadable, not a checkpoint, carrying pickled code, or
    a path that leaves its run folder. The CLI exits with code 2."""


def read_plain(path: str | Path):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code. Any
    failure (a pickled payload, a truncated or empty file, text) is one :class:`RefusedCheckpoint`."""
    path = Path(path)
    if not path.is_file():
        raise RefusedCheckpoint(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, not a torch file, pickled classes or code...
        size = path.stat().st_size
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch's message carries terminal colours
        detail = next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]
        what = "an empty (0-byte) file" if size == 0 else f"a {size:,}-byte file"
        raise RefusedCheckpoint(f"{path}: refused: {what} that is not a plain torch checkpoint "
                                f"({type(error).__name__}{': ' + detail if detail else ''})") from None


def save_checkpoint(path: str | Path, *, kind: str, config: dict, state_dict: dict, **extra: Any) -> Path:
    from crysdiff import __version__

    path = Path(path)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "crysdiff",
        "format_version": FORMAT_VERSION,
        "crysdiff_version": __version__,
        "kind": kind,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    for key, value in extra.items():
        payload[key] = value
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...] | None = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its format (and kind)."""
    path = Path(path)
    payload = read_plain(path)
    if not isinstance(payload, dict) or payload.get("format") != "crysdiff":
        raise RefusedCheckpoint(f"{path}: not a crysdiff checkpoint (no 'format: crysdiff' header)")
    if int(payload.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this crysdiff understands ({FORMAT_VERSION}); upgrade crysdiff"
        )
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else kind
        if payload.get("kind") not in kinds:
            raise CheckpointError(f"{path}: expected a {' or '.join(kinds)} checkpoint, found a {payload.get('kind')!r} one")
    return payload
