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
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT_VERSION"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable crysdiff checkpoint."""


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
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, not a torch file, pickled classes...
        raise CheckpointError(f"{path}: not a readable crysdiff checkpoint ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != "crysdiff":
        raise CheckpointError(f"{path}: not a crysdiff checkpoint (no 'format: crysdiff' header)")
    if int(payload.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this crysdiff understands ({FORMAT_VERSION}); upgrade crysdiff"
        )
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else kind
        if payload.get("kind") not in kinds:
            raise CheckpointError(f"{path}: expected a {' or '.join(kinds)} checkpoint, found a {payload.get('kind')!r} one")
    return payload
