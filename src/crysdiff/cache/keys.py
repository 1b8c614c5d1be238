"""Part keys: which sources share a part, and the content digest that names it (``CACHE/<key>/``)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from itertools import groupby
from pathlib import Path

from crysdiff.cache.part import CACHE_VERSION
from crysdiff.cells import AS_GIVEN, CellConfig
from crysdiff.crystal import ValidationSettings


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


class Digests:
    """BLAKE2 digests of files, remembered against (size, mtime_ns) in ``CACHE/digests.json``."""

    def __init__(self, root: Path, rehash: bool = False):
        self.path = root / "digests.json"
        self.rehash = rehash  # re-read every file, whatever its (size, mtime_ns) say
        try:
            self.table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}
        self.dirty = False

    def __call__(self, file: Path) -> str:
        stat = file.stat()
        key = str(file)
        entry = self.table.get(key)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns and not self.rehash:
            return entry[2]
        digest = hashlib.blake2b(file.read_bytes(), digest_size=16).hexdigest()
        if entry is None or entry[2] != digest or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            self.table[key] = [stat.st_size, stat.st_mtime_ns, digest]
            self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = self.path.with_name(f".digests-{os.getpid()}.json")
        tmp.write_text(json.dumps(self.table))
        os.replace(tmp, self.path)
        self.dirty = False


def group_key(group, settings: ValidationSettings, format: str | None, digests: Digests, cell: CellConfig = AS_GIVEN) -> str:
    hasher = hashlib.blake2b(digest_size=12)
    header = {"version": CACHE_VERSION, "settings": asdict(settings), "format": format}
    if cell.canonical:  # cells as given keep the keys they always had
        header["cell"] = asdict(cell)
    hasher.update(json.dumps(header, sort_keys=True).encode())
    for source in group:
        path = Path(source.path)
        hasher.update(json.dumps([source.path, source.format, source.labels_path]).encode())
        for file in _source_files(path):
            hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            hasher.update(digests(file).encode())
    return hasher.hexdigest()


_DATASET_FORMATS = {"csv", "extxyz", "folder", "jarvis", "ase"}
_LOOSE_FILE_BYTES = 1 << 20


def group_sources(sources) -> list[list]:
    """Parts: a dataset (a table, a trajectory, a labelled folder, any file of 1 MiB or more) is a
    part of its own, so it is parsed once however it is later pooled; consecutive small loose
    structure files of one folder share a part (3,000 CIFs are one part, not 3,000)."""

    def group(source) -> str:
        path = Path(source.path)
        if source.format in _DATASET_FORMATS or path.is_dir() or path.stat().st_size >= _LOOSE_FILE_BYTES:
            return source.path
        return str(path.parent) + "/"

    return [list(g) for _, g in groupby(sources, key=group)]
