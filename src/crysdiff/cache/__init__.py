"""The on-disk, memory-mapped dataset cache.

Parsing happens once into *parts*: folders of flat ``.npy`` arrays opened with ``mmap_mode="r"``::

    atomic_numbers [N_total] uint8     frac_coords [N_total, 3] float64   atom_offset [B+1] int64
    lattices [B, 3, 3] float64         labels [B, T] float64 (NaN = missing)
    source_local [B] int32 (which of the part's sources)
    id_bytes [...] uint8 (UTF-8 ids, concatenated)  id_offset [B+1] int64    meta.json

and, in a part built with canonical cells (``cell=CellConfig()``, see :mod:`crysdiff.cells`)::

    given_atoms [B] int64 (atoms in the cell the source held)   cell_fallback [B] uint8 (1: kept its own cell)

so iterating a dataset holds no Python object per crystal, and the same code serves 68k or 800k
structures. A dataset file (a CSV table, an extxyz trajectory, a labelled folder...) is a part of
its own, so ``mp2018/train.csv.gz`` is parsed once whether it is read alone or pooled with
everything else; small loose structure files of one folder share a part (3,000 CIFs are one part,
not 3,000). A dataset is a list of parts; crystal ``i`` is located by a binary search over the
parts' sizes.

**Keys.** A part lives in ``CACHE/<key>/``, where ``key`` hashes the cache format version, the
validation settings, the cell settings (when cells are canonicalised), the forced format, each source's absolute path and format, and the *content*
of every file (BLAKE2). Content digests are remembered in ``CACHE/digests.json`` against each
file's (size, mtime_ns): an unchanged file is not re-read, so a warm open of the whole shared pool
takes well under a second, while any edit (or a change of settings) gives a new key and a rebuild.

**Damaged parts heal.** Every part's ``meta.json`` records the byte size and a CRC-32 of each of
its ``.npy`` files. Opening a part checks the sizes (and, for parts of up to 4 MiB, the checksums);
``load_dataset(verify=True)`` (``crysdiff data cache --verify``) checks every checksum and re-hashes
every source file instead of trusting (size, mtime_ns). A damaged part is reported in one line,
removed and rebuilt from its sources.

**Atomic writes.** A part is built in ``CACHE/.tmp-<key>-<pid>/`` and renamed into place only when
complete: an interrupted build leaves no corrupt part and never touches existing ones. Temporary
folders of dead processes are removed by the next build.

**Parallel parsing.** :func:`crysdiff.io.plan` cuts each source into tasks in this process (it only
reads bytes); worker processes parse and validate (:func:`crysdiff.io.run_task`), and results come
back in order, streamed to disk one part at a time, with a progress bar on stderr.

The default cache folder is ``$CRYSDIFF_CACHE`` or ``~/.cache/crysdiff``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from crysdiff.cache.build import build_parts
from crysdiff.cache.dataset import CrystalCache, DatasetError
from crysdiff.cache.keys import Digests, group_key, group_sources
from crysdiff.cache.part import CACHE_VERSION, damaged_or_missing, part_problem
from crysdiff.cache.writer import remove_stale_tmp
from crysdiff.cells import AS_GIVEN, CellConfig
from crysdiff.crystal import RecordError, ValidationSettings

__all__ = ["CrystalCache", "DatasetError", "load_dataset", "default_cache_dir", "part_problem", "CACHE_VERSION"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("CRYSDIFF_CACHE") or Path.home() / ".cache" / "crysdiff")


def load_dataset(
    sources,
    *,
    cache_dir: str | Path | None = None,
    settings: ValidationSettings = ValidationSettings(),
    format: str | None = None,
    strict: bool = False,
    workers: int | None = None,
    progress: bool = True,
    verify: bool = False,
    cell: CellConfig | None = None,
) -> CrystalCache:
    """Open (building what is missing) the cache of ``sources``: paths of files, folders, datasets.

    Args:
        sources: paths (see :func:`crysdiff.io.resolve`); several paths pool into one dataset.
        cache_dir: where parts live (default :func:`default_cache_dir`).
        workers: parser processes (default: all cores; 1 parses in this process).
        cell: canonical cells (:class:`~crysdiff.cells.CellConfig`); ``None`` or ``canonical=False``:
            cells as the sources hold them.
        verify: re-hash every source file (an in-place edit that kept size and mtime is otherwise
            not seen) and check every part's checksums, not only its sizes.
    A damaged part (a file truncated or changed, meta.json unreadable) is reported in one line on
    stderr, removed and rebuilt from its sources.
    Raises:
        FileNotFoundError / ValueError: a path is missing or its format unknown.
        RecordError: with ``strict``, the first bad record.
        DatasetError: no crystal at all could be read (the message lists the first reasons).
    """
    from crysdiff.io import Source, resolve

    if isinstance(sources, (str, Path)):
        sources = [sources]
    resolved = [Source(str(Path(s.path).resolve()), s.format, s.labels_path) for s in resolve(list(sources), format=format)]
    if not resolved:
        raise DatasetError(f"no structure files found in {', '.join(map(str, sources))}")
    groups = group_sources(resolved)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    digests = Digests(root, rehash=verify)
    cell = cell or AS_GIVEN
    keys = [group_key(g, settings, format, digests, cell) for g in groups]
    digests.save()
    missing = damaged_or_missing(root, keys, groups, checksums=True if verify else None)
    if strict:  # a cached part with skipped records must fail a strict open as well
        _refuse_skipped([root / key for k, key in enumerate(keys) if k not in missing])
    count = max(1, workers if workers is not None else (os.cpu_count() or 1))
    if missing:
        remove_stale_tmp(root)
        build_parts([groups[k] for k in missing], [keys[k] for k in missing], root, settings, strict, count, progress, cell)
    try:
        cache = CrystalCache([root / key for key in keys])
    except (OSError, ValueError, KeyError, TypeError):  # damage the size checks did not see: check everything
        again = damaged_or_missing(root, keys, groups, checksums=True)
        build_parts([groups[k] for k in again], [keys[k] for k in again], root, settings, strict, count, progress, cell)
        cache = CrystalCache([root / key for key in keys])
    _report(cache, sources)
    return cache


def _refuse_skipped(folders: list[Path]) -> None:
    """A strict open: the first record a cached part skipped, raised as a :class:`RecordError`."""
    for folder in folders:
        skipped = json.loads((folder / "meta.json").read_text())["skipped"]
        if skipped:
            first = skipped[0]
            raise RecordError(first["source"], first["record"], first["reason"])


def _report(cache: CrystalCache, sources) -> None:
    """Warn once per caveat the parts recorded; a dataset with no crystal at all is a :class:`DatasetError`."""
    from crysdiff.notices import warn_once

    for notice in cache.notices:
        warn_once(f"{notice['source']}: {notice['reason']}")
    if cache.num_crystals == 0:
        reasons = "; ".join(f"{e['source']} [{e['record']}]: {e['reason']}" for e in cache.skipped[:3])
        raise DatasetError(
            f"no usable crystal in {', '.join(map(str, sources))} ({len(cache.skipped)} records skipped"
            + (f"; first: {reasons}" if reasons else "") + ")"
        )
