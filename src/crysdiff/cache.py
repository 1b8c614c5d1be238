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

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
import zlib
from array import array
from dataclasses import asdict
from itertools import groupby
from pathlib import Path

import numpy as np

from crysdiff.cells import AS_GIVEN, CellConfig, Reduced, canonical_cell
from crysdiff.crystal import Crystal, Notice, RecordError, ValidationSettings

__all__ = ["CrystalCache", "DatasetError", "load_dataset", "default_cache_dir", "CACHE_VERSION"]

CACHE_VERSION = 3  # 3: meta.json records each file's size and CRC-32
_MAPPED = ("atomic_numbers", "frac_coords", "lattices", "labels", "id_bytes")  # memory-mapped
_LOADED = ("atom_offset", "id_offset", "source_local")  # small, read into memory
_CELL = ("given_atoms", "cell_fallback")  # parts with canonical cells only, read into memory


class DatasetError(ValueError):
    """A dataset that cannot be used as a whole (nothing readable, an unknown target...)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("CRYSDIFF_CACHE") or Path.home() / ".cache" / "crysdiff")


# --- content fingerprints -------------------------------------------------------------------------


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


class _Digests:
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


def _group_key(group, settings: ValidationSettings, format: str | None, digests: _Digests, cell: CellConfig = AS_GIVEN) -> str:
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


def _group_sources(sources) -> list[list]:
    """Parts: a dataset (a table, a trajectory, a labelled folder, any file of 1 MiB or more) is a
    part of its own, so it is parsed once however it is later pooled; consecutive small loose
    structure files of one folder share a part (3,000 CIFs are one part, not 3,000)."""

    def group(source) -> str:
        path = Path(source.path)
        if source.format in _DATASET_FORMATS or path.is_dir() or path.stat().st_size >= _LOOSE_FILE_BYTES:
            return source.path
        return str(path.parent) + "/"

    return [list(g) for _, g in groupby(sources, key=group)]


# --- one part ---------------------------------------------------------------------------------------


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


def _file_records(folder: Path, names) -> dict[str, list[int]]:
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


class _Part:
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


class _PartWriter:
    """Streams the crystals of one group into temporary files, then writes the part atomically."""

    _STREAMS = ("z", "frac", "lattice", "ids", "label_cells", "label_values")

    def __init__(self, root: Path, key: str, sources, strict: bool, settings: ValidationSettings, cell: CellConfig = AS_GIVEN):
        self.root, self.key, self.sources, self.strict, self.settings = root, key, sources, strict, settings
        self.cell = cell
        self.given_atoms, self.cell_fallback = array("q"), array("b")
        self.fallbacks: list[dict] = []
        self.tmp = root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        # streamed to disk as results arrive: memory stays bounded whatever the corpus size
        self.files = {name: open(self.tmp / f"{name}.bin", "wb") for name in self._STREAMS}
        self.counts = array("q")  # atoms per crystal
        self.id_lengths = array("q")
        self.source_local = array("i")
        self.label_names: dict[str, int] = {}
        self.skipped: list[dict] = []
        self.notices: list[dict] = []
        self.records = 0

    def add(self, item, slot: int) -> None:
        """One result of source ``slot`` (its position in the group)."""
        if isinstance(item, Notice):  # kept once per file and reason
            if (item.source, item.reason) not in {(n["source"], n["reason"]) for n in self.notices}:
                self.notices.append(item.as_dict())
            return
        self.records += 1
        if isinstance(item, RecordError):
            if self.strict:
                raise item
            self.skipped.append(item.as_dict())
            return
        if isinstance(item, Reduced):
            self.given_atoms.append(item.given_atoms)
            self.cell_fallback.append(1 if item.fallback else 0)
            if item.fallback:
                self.fallbacks.append({"source": item.crystal.source, "record": item.crystal.record or item.crystal.id,
                                       "reason": item.fallback})
            item = item.crystal
        crystal: Crystal = item
        files = self.files
        files["z"].write(np.asarray(crystal.atomic_numbers, dtype=np.uint8).tobytes())
        files["frac"].write(np.asarray(crystal.frac_coords, dtype=np.float64).tobytes())
        files["lattice"].write(np.asarray(crystal.lattice, dtype=np.float64).tobytes())
        encoded = str(crystal.id).encode("utf-8")
        files["ids"].write(encoded)
        row = len(self.counts)
        self.id_lengths.append(len(encoded))
        self.counts.append(crystal.num_atoms)
        self.source_local.append(slot)
        if crystal.labels:
            cells = [(row, self.label_names.setdefault(name, len(self.label_names))) for name in crystal.labels]
            files["label_cells"].write(np.array(cells, dtype=np.int64).tobytes())
            files["label_values"].write(np.array(list(crystal.labels.values()), dtype=np.float64).tobytes())

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()

    def finish(self, units: dict[str, str]) -> Path:
        self.close()
        n, total = len(self.counts), int(sum(self.counts))
        names = list(self.label_names)
        labels = np.full((n, len(names)), np.nan, dtype=np.float64)
        cells = np.fromfile(self.tmp / "label_cells.bin", dtype=np.int64).reshape(-1, 2)
        labels[cells[:, 0], cells[:, 1]] = np.fromfile(self.tmp / "label_values.bin", dtype=np.float64)
        arrays = {
            "atomic_numbers": np.fromfile(self.tmp / "z.bin", dtype=np.uint8),
            "frac_coords": np.fromfile(self.tmp / "frac.bin", dtype=np.float64).reshape(total, 3),
            "atom_offset": np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int64),
            "lattices": np.fromfile(self.tmp / "lattice.bin", dtype=np.float64).reshape(n, 3, 3),
            "labels": labels,
            "source_local": np.frombuffer(self.source_local, dtype=np.int32) if n else np.zeros(0, np.int32),
            "id_bytes": np.fromfile(self.tmp / "ids.bin", dtype=np.uint8),
            "id_offset": np.concatenate([[0], np.cumsum(self.id_lengths, dtype=np.int64)]).astype(np.int64),
        }
        if self.cell.canonical:
            arrays["given_atoms"] = np.array(self.given_atoms, dtype=np.int64)
            arrays["cell_fallback"] = np.array(self.cell_fallback, dtype=np.uint8)
        for name, values in arrays.items():
            np.save(self.tmp / f"{name}.npy", values)
        for name in self._STREAMS:
            (self.tmp / f"{name}.bin").unlink()
        files = _file_records(self.tmp, [f"{name}.npy" for name in arrays])
        per_source = np.bincount(arrays["source_local"], minlength=len(self.sources))
        meta = {
            "version": CACHE_VERSION, "key": self.key, "settings": asdict(self.settings),
            "sources": [{"path": s.path, "format": s.format, "crystals": int(c)} for s, c in zip(self.sources, per_source)],
            "num_crystals": n, "num_atoms": total, "records": self.records, "label_names": names,
            "units": {k: units[k] for k in names if k in units}, "skipped": self.skipped, "created": time.time(),
            "files": files, "notices": self.notices,
        }
        if self.cell.canonical:
            meta.update(cell=asdict(self.cell), fallbacks=self.fallbacks)
        (self.tmp / "meta.json").write_text(json.dumps(meta))
        final = self.root / self.key
        try:
            os.rename(self.tmp, final)
        except OSError:  # another process finished the same part first: theirs is as good
            shutil.rmtree(self.tmp, ignore_errors=True)
        return final

    def abort(self) -> None:
        self.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _remove_stale_tmp(root: Path) -> None:
    for tmp in root.glob(".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


# --- parallel build ---------------------------------------------------------------------------------

_WORKER_SETTINGS: ValidationSettings | None = None
_WORKER_CELL: CellConfig = AS_GIVEN


def _init_worker(settings: ValidationSettings, cell: CellConfig = AS_GIVEN) -> None:
    global _WORKER_SETTINGS, _WORKER_CELL
    _WORKER_SETTINGS, _WORKER_CELL = settings, cell


def _run(job):
    """Worker: ``(group, slot, task)`` -> ``(group, slot, results)``; a whole-source failure passes through."""
    from crysdiff.io import run_task

    group, slot, task = job
    if isinstance(task, RecordError):
        return group, slot, [task]
    results = run_task(task, _WORKER_SETTINGS)
    if _WORKER_CELL.canonical:
        results = [canonical_cell(r, _WORKER_CELL) if isinstance(r, Crystal) else r for r in results]
    return group, slot, results


def _jobs(groups, chunk_size: int):
    from crysdiff.io import plan

    for g, sources in enumerate(groups):
        for slot, source in enumerate(sources):
            try:
                for task in plan(source, chunk_size=chunk_size):
                    yield g, slot, task
            except RecordError as error:
                yield g, slot, error


def _build(groups, keys, root: Path, settings, strict, workers, progress, cell: CellConfig = AS_GIVEN) -> None:
    """Parse ``groups`` (lists of sources) into parts ``root/keys[g]``; results arrive in order, so
    one part is open at a time."""
    from crysdiff.io import KNOWN_UNITS

    bar = _progress(progress)
    writer: _PartWriter | None = None
    done = 0  # groups finished
    pool = None
    # Pool.imap drains its input eagerly: cap the tasks in flight so raw payloads of a huge corpus
    # are never all in memory at once.
    in_flight, stop = threading.Semaphore(4 * workers + 2), threading.Event()

    def throttled():
        for job in _jobs(groups, 256):
            while not in_flight.acquire(timeout=0.1):
                if stop.is_set():
                    return
            yield job

    try:
        if workers <= 1:
            _init_worker(settings, cell)
            results = map(_run, throttled())
        else:
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(settings, cell))
            results = pool.imap(_run, throttled(), chunksize=1)
        for g, slot, items in results:
            in_flight.release()
            while writer is None or g > done:
                if writer is not None:  # group finished (or groups that yielded nothing)
                    writer.finish(KNOWN_UNITS)
                    done += 1
                writer = _PartWriter(root, keys[done], groups[done], strict, settings, cell)
            for item in items:
                writer.add(item, slot)
            if bar is not None:
                bar.update(bar.task_id, advance=len(items))
        while done < len(groups):
            if writer is None:
                writer = _PartWriter(root, keys[done], groups[done], strict, settings, cell)
            writer.finish(KNOWN_UNITS)
            writer = None
            done += 1
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        stop.set()
        if pool is not None:
            _stop_pool(pool)
        if bar is not None:
            bar.stop()


def _stop_pool(pool) -> None:
    """``Pool.terminate()``, made safe after an error. CPython's pool can hang in terminate: its task
    feeder thread may be blocked writing a large task (raw file text) into the pipe of workers that
    are already gone, and terminate waits for that thread. So terminate runs in a helper thread; if it
    has not finished after a few seconds, the parent's read end of the task pipe is closed, which
    turns the blocked write into an error and lets terminate finish."""
    closer = threading.Thread(target=pool.terminate, name="crysdiff-pool-terminate", daemon=True)
    closer.start()
    closer.join(5.0)
    if closer.is_alive():
        try:
            pool._inqueue._reader.close()  # CPython's Pool keeps the task pipe here
        except (AttributeError, OSError):
            pass
        closer.join(30.0)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("parsing structures"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    bar.task_id = bar.add_task("parse", total=None)
    bar.start()
    return bar


# --- the dataset ------------------------------------------------------------------------------------


def _damaged_or_missing(root: Path, keys: list[str], groups, checksums: bool | None) -> list[int]:
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


class CrystalCache:
    """A dataset: one or more memory-mapped parts, addressed by a global crystal index ``0..B-1``.

    Attributes:
        num_crystals: ``B``. num_atoms: ``[B]`` int64. source_index: ``[B]`` int32 into :attr:`sources`.
        label_names: label columns; units: label name -> unit.
    """

    def __init__(self, folders: list[Path]):
        self._folders = [Path(f) for f in folders]
        self._open()

    def _open(self) -> None:
        self.parts = [_Part(f) for f in self._folders]
        sizes = np.array([p.size for p in self.parts], dtype=np.int64)
        self.part_start = np.concatenate([[0], np.cumsum(sizes)])
        self.num_crystals = int(self.part_start[-1])
        self.num_atoms = np.concatenate([p.num_atoms for p in self.parts]) if self.parts else np.zeros(0, np.int64)
        self._sources = [s for p in self.parts for s in p.meta["sources"]]
        source_start = np.cumsum([0] + [len(p.meta["sources"]) for p in self.parts])
        self.source_index = np.concatenate(
            [p.arrays["source_local"].astype(np.int32) + source_start[k] for k, p in enumerate(self.parts)]
        ) if self.parts else np.zeros(0, np.int32)
        names: list[str] = []
        for part in self.parts:
            names += [n for n in part.meta["label_names"] if n not in names]
        self.label_names = names
        self.units = {}
        for part in self.parts:
            self.units.update(part.meta.get("units", {}))
        # the cells the sources held: atoms per crystal and whether canonicalisation fell back to them
        self.given_atoms = np.concatenate([p.arrays.get("given_atoms", p.num_atoms) for p in self.parts]).astype(np.int64) \
            if self.parts else np.zeros(0, np.int64)
        self.cell_fallback = np.concatenate([np.asarray(p.arrays["cell_fallback"], bool) if "cell_fallback" in p.arrays
                                             else np.zeros(p.size, bool) for p in self.parts]) if self.parts else np.zeros(0, bool)
        self._labels = None

    def __getstate__(self):  # workers reopen the memory maps instead of copying them
        return {"folders": self._folders}

    def __setstate__(self, state):
        self._folders = state["folders"]
        self._open()

    def __len__(self) -> int:
        return self.num_crystals

    @property
    def sources(self) -> list[str]:
        """Source paths (files or labelled folders); :attr:`source_index` points into this list."""
        return [s["path"] for s in self._sources]

    @property
    def formats(self) -> list[str]:
        return [s["format"] for s in self._sources]

    @property
    def folders(self) -> list[Path]:
        """The part folders on disk."""
        return list(self._folders)

    @property
    def skipped(self) -> list[dict]:
        """Every record left out, as ``dict(source, record, reason)``."""
        return [entry for p in self.parts for entry in p.meta["skipped"]]

    @property
    def fallbacks(self) -> list[dict]:
        """Crystals that kept their own cell although canonical cells were asked for, as ``dict(source, record, reason)``."""
        return [entry for p in self.parts for entry in p.meta.get("fallbacks", [])]

    @property
    def notices(self) -> list[dict]:
        """Records read with a caveat worth a warning (e.g. deuterium read as H), once per file and reason."""
        return [entry for p in self.parts for entry in p.meta.get("notices", [])]

    @property
    def labels(self) -> np.ndarray:
        """``[B, T]`` float64, NaN where a crystal has no value (columns: :attr:`label_names`)."""
        if self._labels is None:
            out = np.full((self.num_crystals, len(self.label_names)), np.nan)
            for part, start in zip(self.parts, self.part_start[:-1]):
                for k, name in enumerate(part.meta["label_names"]):
                    out[start:start + part.size, self.label_names.index(name)] = part.arrays["labels"][:, k]
            self._labels = out
        return self._labels

    def _locate(self, i: int) -> tuple[_Part, int]:
        if not 0 <= i < self.num_crystals:
            raise IndexError(f"crystal index {i} out of range for a dataset of {self.num_crystals}")
        p = int(np.searchsorted(self.part_start, i, side="right") - 1)
        return self.parts[p], i - int(self.part_start[p])

    def id(self, i: int) -> str:
        part, local = self._locate(int(i))
        return part.id(local)

    def source_of(self, i: int) -> str:
        self._locate(int(i))
        return self._sources[int(self.source_index[int(i)])]["path"]

    def crystal(self, i: int) -> Crystal:
        """Crystal ``i`` as a :class:`~crysdiff.crystal.Crystal` (for inspection; batches use :meth:`gather`)."""
        part, local = self._locate(int(i))
        lo, hi = part.atom_offset[local], part.atom_offset[local + 1]
        row = self.labels[int(i)]
        return Crystal(
            atomic_numbers=np.asarray(part.arrays["atomic_numbers"][lo:hi], dtype=np.int64),
            frac_coords=np.array(part.arrays["frac_coords"][lo:hi]),
            lattice=np.array(part.arrays["lattices"][local]),
            id=part.id(local),
            labels={name: float(row[k]) for k, name in enumerate(self.label_names) if math.isfinite(row[k])},
            source=self.source_of(i),
            record=str(local),
        )

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat arrays of the crystals ``indices`` (in that order): atomic numbers ``[N]``,
        fractional coordinates ``[N, 3]``, lattices ``[B, 3, 3]`` and atom counts ``[B]``.
        Vectorised per part: no Python loop over crystals."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.num_atoms[indices]  # [B]
        z = np.empty(int(counts.sum()), dtype=np.int64)
        frac = np.empty((z.shape[0], 3), dtype=np.float64)
        lattices = np.empty((indices.shape[0], 3, 3), dtype=np.float64)
        atom_pos = np.concatenate([[0], np.cumsum(counts)])  # [B+1] where each crystal goes in the batch
        owner = np.searchsorted(self.part_start, indices, side="right") - 1
        for p in np.unique(owner):
            part = self.parts[p]
            sel = np.flatnonzero(owner == p)
            local = indices[sel] - self.part_start[p]
            lattices[sel] = part.arrays["lattices"][local]
            local_counts = counts[sel]
            starts = part.atom_offset[local]
            # atom rows of these crystals inside the part, and where they go in the batch
            rank = np.arange(int(local_counts.sum())) - np.repeat(np.cumsum(local_counts) - local_counts, local_counts)
            src = np.repeat(starts, local_counts) + rank
            dst = np.repeat(atom_pos[sel], local_counts) + rank
            z[dst] = part.arrays["atomic_numbers"][src]
            frac[dst] = part.arrays["frac_coords"][src]
        return z, frac, lattices, counts

    def subset_labels(self, indices: np.ndarray, targets: list[str]) -> np.ndarray:
        """``[len(indices), len(targets)]`` label values (NaN where missing)."""
        unknown = [t for t in targets if t not in self.label_names]
        if unknown:
            raise DatasetError(f"unknown target {unknown[0]!r}; labels in this dataset: {', '.join(self.label_names) or 'none'}")
        columns = [self.label_names.index(t) for t in targets]
        return self.labels[np.asarray(indices)][:, columns]


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
    groups = _group_sources(resolved)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    digests = _Digests(root, rehash=verify)
    cell = cell or AS_GIVEN
    keys = [_group_key(g, settings, format, digests, cell) for g in groups]
    digests.save()
    missing = _damaged_or_missing(root, keys, groups, checksums=True if verify else None)
    if strict:  # a cached part with skipped records must fail a strict open as well
        for k, key in enumerate(keys):
            if k not in missing:
                skipped = json.loads((root / key / "meta.json").read_text())["skipped"]
                if skipped:
                    first = skipped[0]
                    raise RecordError(first["source"], first["record"], first["reason"])
    count = max(1, workers if workers is not None else (os.cpu_count() or 1))
    if missing:
        _remove_stale_tmp(root)
        _build([groups[k] for k in missing], [keys[k] for k in missing], root, settings, strict, count, progress, cell)
    try:
        cache = CrystalCache([root / key for key in keys])
    except (OSError, ValueError, KeyError, TypeError):  # damage the size checks did not see: check everything
        again = _damaged_or_missing(root, keys, groups, checksums=True)
        _build([groups[k] for k in again], [keys[k] for k in again], root, settings, strict, count, progress, cell)
        cache = CrystalCache([root / key for key in keys])
    for notice in cache.notices:
        from crysdiff.notices import warn_once

        warn_once(f"{notice['source']}: {notice['reason']}")
    if cache.num_crystals == 0:
        reasons = "; ".join(f"{e['source']} [{e['record']}]: {e['reason']}" for e in cache.skipped[:3])
        raise DatasetError(
            f"no usable crystal in {', '.join(map(str, sources))} ({len(cache.skipped)} records skipped"
            + (f"; first: {reasons}" if reasons else "") + ")"
        )
    return cache
