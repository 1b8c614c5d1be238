"""One part on disk: its files, their sizes and checksums in meta.json, and reading it back."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

CACHE_VERSION = 3  # 3: meta.json records each file's size and CRC-32
_MAPPED = ("atomic_numbers", "frac_coords", "lattices", "labels", "id_bytes")  # memory-mapped
_LOADED = ("atom_offset", "id_offset", "source_local")  # small, read into memory
_CELL = ("given_atoms", "cell_fallback")  # parts with canonical cells only, read into memory


def _load(file: Path, mmap: bool):
    if mmap and file.stat().st_size > 4096:  # tiny or empty arrays: read (an empty file cannot be mapped)
        return np.load(file, mmap_mode="r")
    return np.load(file)


_CHECKSUM_ON_OPEN_BYTES = 4 << 20  # parts up to this size are checksummed at every open (a few ms)


def _crc32(file: Path) -> int:
    crc = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def file_records(folder: Path, names) -> dict[str, list[int]]:
    """``{file name: [bytes, crc32]}`` of the part's files, written into its meta.json."""
    return {name: [(folder / name).stat().st_size, _crc32(folder / name)] for name in names}


def part_problem(folder: Path, checksums: bool | None = None) -> str | None:
    """What is wrong with the part in ``folder`` (``None``: it is whole). Sizes are always checked
    against meta.json; checksums too with ``checksums=True``, or by default for small parts."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        files = meta["files"]
        if meta.get("version") != CACHE_VERSION or not isinstance(files, dict):
            raise KeyError("version")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"meta.json is unreadable or incomplete ({type(error).__name__})"
    expected = {f"{name}.npy" for name in _MAPPED + _LOADED + (_CELL if meta.get("cell") else ())}
    if set(files) != expected:
        return "meta.json does not list the part's files"
    total = 0
    for name, (size, _) in sorted(files.items()):
        try:
            found = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if found != size:
            return f"{name} holds {found:,} bytes, meta.json says {size:,} (truncated or replaced)"
        total += size
    if checksums or (checksums is None and total <= _CHECKSUM_ON_OPEN_BYTES):
        for name, (_, crc) in sorted(files.items()):
            if _crc32(folder / name) != crc:
                return f"{name} does not match its checksum (damaged)"
    return None


def _discard(folder: Path) -> None:
    """Move a damaged part out of the way (one rename, so a concurrent reader sees it or nothing) and delete it."""
    doomed = folder.with_name(f".tmp-damaged-{folder.name}-{os.getpid()}")
    try:
        os.rename(folder, doomed)
    except OSError:  # another process moved it already
        return
    shutil.rmtree(doomed, ignore_errors=True)


class Part:
    """One parsed group of sources, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        names = _MAPPED + _LOADED + (_CELL if self.meta.get("cell") else ())
        self.arrays = {name: _load(folder / f"{name}.npy", name in _MAPPED) for name in names}
        self.atom_offset = self.arrays["atom_offset"]  # [B+1]
        self.num_atoms = np.diff(self.atom_offset).astype(np.int64)
        self.size = int(self.num_atoms.shape[0])
        self.id_offset = self.arrays["id_offset"]

    def id(self, i: int) -> str:
        lo, hi = self.id_offset[i], self.id_offset[i + 1]
        return bytes(self.arrays["id_bytes"][lo:hi]).decode("utf-8")


def damaged_or_missing(root: Path, keys: list[str], groups, checksums: bool | None) -> list[int]:
    """Indices of the parts to build: missing ones, and damaged ones (reported, then removed)."""
    from crysdiff.notices import warn

    todo = []
    for k, key in enumerate(keys):
        folder = root / key
        if not folder.exists():
            todo.append(k)
            continue
        problem = part_problem(folder, checksums)
        if problem is not None:
            names = ", ".join(Path(s.path).name for s in groups[k][:3]) + (", ..." if len(groups[k]) > 3 else "")
            warn(f"cache part {folder} is damaged: {problem}; rebuilding it from its sources ({names})")
            _discard(folder)
            todo.append(k)
    return todo
