"""What crysdiff may load from a run folder (``OUT/checkpoints/``) when a run is resumed or exported.

Lightning's checkpoints are pickles. Every one of them is read here with ``weights_only=True``
(tensors and plain containers only), so a file carrying a pickled payload is refused instead of
run. The paths Lightning keeps in ``last.ckpt`` (the best checkpoint, the last one, the top k) are
absolute paths of the folder the run was in: they must name files of that folder, and are moved to
the folder being resumed (a copied run folder resumes from its own files, never the original's).
A path that leaves the folder is refused. Refusals raise :class:`RefusedCheckpoint` (one line that
names the file; the CLI exits with code 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from crysdiff.checkpoint import RefusedCheckpoint, read_plain

__all__ = ["resume_checkpoint", "best_state_dict"]

# the fields of Lightning's ModelCheckpoint state that hold paths
_PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _checkpoint_dir(out_dir: str | Path) -> Path:
    # as Lightning's ModelCheckpoint writes its dirpath (real, absolute): it restores the best score,
    # the best path and the top k only when the stored dirpath is the same string as its own, so a
    # relative --out or a folder reached through a link must not read as a moved folder
    return Path(os.path.realpath(Path(out_dir) / "checkpoints"))


def _rebase(path: str, stored_dir: str, here: Path, last: Path) -> str:
    """``path`` (a file of ``stored_dir``) as the same file of ``here``; refused if it is not one."""
    if not path:
        return path
    name = os.path.basename(path)
    if os.path.normpath(os.path.dirname(path)) != os.path.normpath(stored_dir) or name in ("", ".", ".."):
        raise RefusedCheckpoint(f"{last}: refers to {path}, outside its run folder {stored_dir}; refused")
    return str(here / name)


def resume_checkpoint(out_dir: str | Path) -> str | None:
    """``OUT/checkpoints/last.ckpt`` made safe for ``trainer.fit(ckpt_path=..., weights_only=True)``, or
    ``None`` if there is none. Its paths are checked and, for a copied folder, rewritten to this
    folder (atomically); the best checkpoint it names is read once (``weights_only=True``) so a
    refused file stops the run before any training."""
    here = _checkpoint_dir(out_dir)
    last = here / "last.ckpt"
    if not last.is_file():
        return None
    payload = read_plain(last)
    changed = False
    referenced = []
    for state in (payload.get("callbacks") or {}).values():
        if not isinstance(state, dict) or "dirpath" not in state:
            continue
        stored = str(state.get("dirpath") or "")
        moved = {key: _rebase(str(state.get(key) or ""), stored, here, last) for key in _PATH_FIELDS if key in state}
        top = {_rebase(str(p), stored, here, last): v for p, v in (state.get("best_k_models") or {}).items()}
        referenced += [p for p in (*moved.values(), *top) if p]
        if os.path.normpath(stored) != os.path.normpath(str(here)):
            state.update(moved, dirpath=str(here))
            if "best_k_models" in state:
                state["best_k_models"] = top
            changed = True
    for path in sorted(set(referenced)):
        if Path(path).is_file() and Path(path).resolve() != last.resolve():
            read_plain(Path(path))
    if changed:
        tmp = last.with_name(f".{last.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, last)
    return str(last)


def best_state_dict(trainer, out_dir: str | Path) -> dict | None:
    """The ``state_dict`` of the run's best checkpoint (``None`` if it has none), read only from inside
    ``OUT/checkpoints`` and with ``weights_only=True``."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None else ""
    if not best:
        return None
    root = _checkpoint_dir(out_dir).resolve()
    path = Path(best).resolve()
    if root not in path.parents:
        raise RefusedCheckpoint(f"{best}: the best checkpoint lies outside the run folder {root}; refused")
    if not path.is_file():
        return None
    payload = read_plain(path)
    if not isinstance(payload.get("state_dict"), dict):
        raise RefusedCheckpoint(f"{best}: no state_dict in this checkpoint; refused")
    return payload["state_dict"]
