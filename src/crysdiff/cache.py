"""The on-disk, memory-mapped dataset cache.

Parsing happens once per source (a file, or a labelled folder) into a *part*: a folder of flat
``.npy`` arrays opened with ``mmap_mode="r"``::

    atomic_numbers [N_total] uint8     frac_coords [N_total, 3] float64   atom_offset [B+1] int64
    lattices [B, 3, 3] float64         labels [B, T] float64 (NaN = missing)
    id_bytes [...] uint8 (UTF-8 ids, concatenated)  id_offset [B+1] int64    meta.json

so iterating a dataset holds no Python object per crystal, and the same code serves 68k or 800k
structures. A dataset (a pre-training pool) is a list of parts; crystal ``i`` of the pool is
located by a binary search over the parts' sizes.

**Keys.** A part lives in ``CACHE/<key>/``, where ``key`` hashes the cache format version and the
crysdiff version, the validation settings, the forced format, the source's path and format, and the *content* of every
file of the source (BLAKE2). Content digests are remembered in ``CACHE/digests.json`` against each
file's (size, mtime): an unchanged file is not re-read, so a warm open of the whole shared pool takes
well under a second, while any edit (or a change of settings) gives a new key and a rebuild.

**Atomic writes.** A part is built in ``CACHE/.tmp-<key>-<pid>/`` and renamed into place only when
complete: an interrupted build leaves no corrupt part and never touches existing ones. Stale
temporary folders of dead processes are removed by the next build.

**Parallel parsing.** :func:`crysdiff.io.plan` cuts each source into tasks in this process (it
only reads bytes); worker processes parse and validate (:func:`crysdiff.io.run_task`), streaming
results back in order into the part's arrays, with a progress bar.

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
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from crysdiff.crystal import Crystal, RecordError, ValidationSettings

__all__ = ["CrystalCache", "DatasetError", "load_dataset", "default_cache_dir", "CACHE_VERSION"]

CACHE_VERSION = 1
_ARRAYS = ("atomic_numbers", "frac_coords", "atom_offset", "lattices", "labels", "id_bytes", "id_offset")


class DatasetError(ValueError):
    """A dataset that cannot be used as a whole (nothing readable, a strict failure...)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("CRYSDIFF_CACHE") or Path.home() / ".cache" / "crysdiff")


# --- content fingerprints -------------------------------------------------------------------------


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


class _Digests:
    """BLAKE2 digests of files, remembered against (size, mtime_ns) in ``CACHE/digests.json``."""

    def __init__(self, root: Path):
        self.path = root / "digests.json"
        try:
            self.table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.table = {}
        self.dirty = False

    def __call__(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        entry = self.table.get(key)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        digest = hashlib.blake2b(file.read_bytes(), digest_size=16).hexdigest()
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


def _part_key(source, settings: ValidationSettings, format: str | None, digests: _Digests) -> str:
    path = Path(source.path)
    files = _source_files(path)
    hasher = hashlib.blake2b(digest_size=12)
    from crysdiff import __version__

    # the package version is part of the key: a parser fixed in a new release re-reads the files
    header = {"version": CACHE_VERSION, "crysdiff": __version__, "settings": asdict(settings), "format": format,
              "source_format": source.format, "path": str(path.resolve())}
    hasher.update(json.dumps(header, sort_keys=True).encode())
    for file in files:
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        hasher.update(digests(file).encode())
    return hasher.hexdigest()


# --- one part ---------------------------------------------------------------------------------------


class _Part:
    """One parsed source, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        self.atom_offset = np.asarray(self.arrays["atom_offset"])  # small: [B+1]
        self.num_atoms = np.diff(self.atom_offset).astype(np.int64)
        self.size = int(self.num_atoms.shape[0])
        self.id_offset = np.asarray(self.arrays["id_offset"])

    def id(self, i: int) -> str:
        lo, hi = self.id_offset[i], self.id_offset[i + 1]
        return bytes(self.arrays["id_bytes"][lo:hi]).decode("utf-8")


class _PartWriter:
    """Streams crystals of one source into temporary files, then writes the part atomically."""

    def __init__(self, root: Path, key: str, source, strict: bool):
        self.root, self.key, self.source, self.strict = root, key, source, strict
        self.tmp = root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.z = open(self.tmp / "z.bin", "wb")
        self.frac = open(self.tmp / "frac.bin", "wb")
        self.lattice = open(self.tmp / "lattice.bin", "wb")
        self.ids = open(self.tmp / "ids.bin", "wb")
        self.counts: list[int] = []
        self.id_lengths: list[int] = []
        self.label_names: dict[str, int] = {}
        self.label_rows: list[dict[str, float]] = []
        self.skipped: list[dict] = []
        self.records = 0

    def add(self, item) -> None:
        self.records += 1
        if isinstance(item, RecordError):
            if self.strict:
                raise item
            self.skipped.append(item.as_dict())
            return
        crystal: Crystal = item
        self.z.write(np.asarray(crystal.atomic_numbers, dtype=np.uint8).tobytes())
        self.frac.write(np.asarray(crystal.frac_coords, dtype=np.float64).tobytes())
        self.lattice.write(np.asarray(crystal.lattice, dtype=np.float64).tobytes())
        encoded = str(crystal.id).encode("utf-8")
        self.ids.write(encoded)
        self.id_lengths.append(len(encoded))
        self.counts.append(crystal.num_atoms)
        for name in crystal.labels:
            self.label_names.setdefault(name, len(self.label_names))
        self.label_rows.append(crystal.labels)

    def source_failed(self, error: RecordError) -> None:
        if self.strict:
            raise error
        self.skipped.append(error.as_dict())

    def finish(self, units: dict[str, str]) -> Path:
        for handle in (self.z, self.frac, self.lattice, self.ids):
            handle.close()
        n = len(self.counts)
        total = int(sum(self.counts))
        names = list(self.label_names)
        labels = np.full((n, len(names)), np.nan, dtype=np.float64)
        for row, values in enumerate(self.label_rows):
            for name, value in values.items():
                labels[row, self.label_names[name]] = value
        arrays = {
            "atomic_numbers": np.fromfile(self.tmp / "z.bin", dtype=np.uint8),
            "frac_coords": np.fromfile(self.tmp / "frac.bin", dtype=np.float64).reshape(total, 3),
            "atom_offset": np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int64),
            "lattices": np.fromfile(self.tmp / "lattice.bin", dtype=np.float64).reshape(n, 3, 3),
            "labels": labels,
            "id_bytes": np.fromfile(self.tmp / "ids.bin", dtype=np.uint8),
            "id_offset": np.concatenate([[0], np.cumsum(self.id_lengths, dtype=np.int64)]).astype(np.int64),
        }
        for name, array in arrays.items():
            np.save(self.tmp / f"{name}.npy", array)
        for name in ("z.bin", "frac.bin", "lattice.bin", "ids.bin"):
            (self.tmp / name).unlink()
        meta = {
            "version": CACHE_VERSION, "source": self.source.path, "format": self.source.format,
            "num_crystals": n, "num_atoms": total, "records": self.records, "label_names": names,
            "units": {k: units[k] for k in names if k in units}, "skipped": self.skipped, "created": time.time(),
        }
        (self.tmp / "meta.json").write_text(json.dumps(meta))
        final = self.root / self.key
        try:
            os.rename(self.tmp, final)
        except OSError:  # another process finished the same part first: theirs is as good
            shutil.rmtree(self.tmp, ignore_errors=True)
        return final

    def abort(self) -> None:
        for handle in (self.z, self.frac, self.lattice, self.ids):
            handle.close()
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


def _init_worker(settings: ValidationSettings) -> None:
    global _WORKER_SETTINGS
    _WORKER_SETTINGS = settings


def _run(job):
    from crysdiff.io import run_task

    slot, task = job
    return slot, run_task(task, _WORKER_SETTINGS)


def _jobs(sources, chunk_size):
    """Tasks of every source to build, tagged with the writer slot; whole-source failures are
    passed on as ``(slot, RecordError)``."""
    from crysdiff.io import plan

    for slot, source in enumerate(sources):
        try:
            for task in plan(source, chunk_size=chunk_size):
                yield slot, task
        except RecordError as error:
            yield slot, error


def _build(sources, keys, root: Path, settings, strict, workers, progress) -> None:
    from crysdiff.io import KNOWN_UNITS

    writers = [_PartWriter(root, key, source, strict) for source, key in zip(sources, keys)]
    bar = _progress(progress)
    try:
        failed: list[tuple[int, RecordError]] = []

        def jobs():
            for slot, task in _jobs(sources, chunk_size=256):
                if isinstance(task, RecordError):
                    failed.append((slot, task))
                    if strict:
                        return
                    continue
                yield slot, task

        if workers <= 1:
            _init_worker(settings)
            results = map(_run, jobs())
        else:
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(settings,))
            results = pool.imap(_run, jobs(), chunksize=1)
        try:
            for slot, items in results:
                for item in items:
                    writers[slot].add(item)
                if bar is not None:
                    bar.update(bar.task_id, advance=len(items))
        finally:
            if workers > 1:
                pool.terminate()
        for slot, error in failed:
            writers[slot].source_failed(error)
        for writer in writers:
            writer.finish(KNOWN_UNITS)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.stop()


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


class CrystalCache:
    """A dataset: one or more memory-mapped parts, addressed by a global crystal index ``0..B-1``."""

    def __init__(self, folders: list[Path]):
        self._folders = [Path(f) for f in folders]
        self._open()

    def _open(self) -> None:
        self.parts = [_Part(f) for f in self._folders]
        sizes = np.array([p.size for p in self.parts], dtype=np.int64)
        self.part_start = np.concatenate([[0], np.cumsum(sizes)])
        self.num_crystals = int(self.part_start[-1])
        self.num_atoms = np.concatenate([p.num_atoms for p in self.parts]) if self.parts else np.zeros(0, np.int64)
        self.source_index = np.repeat(np.arange(len(self.parts), dtype=np.int32), sizes)
        names: list[str] = []
        for part in self.parts:
            names += [n for n in part.meta["label_names"] if n not in names]
        self.label_names = names
        self.units = {}
        for part in self.parts:
            self.units.update(part.meta.get("units", {}))
        self._labels = None

    def __getstate__(self):
        return {"folders": self._folders}

    def __setstate__(self, state):
        self._folders = state["folders"]
        self._open()

    def __len__(self) -> int:
        return self.num_crystals

    @property
    def sources(self) -> list[str]:
        return [p.meta["source"] for p in self.parts]

    @property
    def formats(self) -> list[str]:
        return [p.meta["format"] for p in self.parts]

    @property
    def skipped(self) -> list[dict]:
        return [entry for p in self.parts for entry in p.meta["skipped"]]

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
        return self._locate(int(i))[0].meta["source"]

    def crystal(self, i: int) -> Crystal:
        part, local = self._locate(int(i))
        lo, hi = part.atom_offset[local], part.atom_offset[local + 1]
        row = self.labels[int(i)]
        return Crystal(
            atomic_numbers=np.asarray(part.arrays["atomic_numbers"][lo:hi], dtype=np.int64),
            frac_coords=np.array(part.arrays["frac_coords"][lo:hi]),
            lattice=np.array(part.arrays["lattices"][local]),
            id=part.id(local),
            labels={name: float(row[k]) for k, name in enumerate(self.label_names) if math.isfinite(row[k])},
            source=part.meta["source"],
            record=str(local),
        )

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat arrays of the crystals ``indices`` (in that order): atomic numbers ``[N]``,
        fractional coordinates ``[N, 3]``, lattices ``[B, 3, 3]`` and atom counts ``[B]``.
        Vectorised per part: no Python loop over crystals."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.num_atoms[indices]
        z = np.empty(int(counts.sum()), dtype=np.int64)
        frac = np.empty((z.shape[0], 3), dtype=np.float64)
        lattices = np.empty((indices.shape[0], 3, 3), dtype=np.float64)
        atom_pos = np.concatenate([[0], np.cumsum(counts)])
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
) -> CrystalCache:
    """Open (building what is missing) the cache of ``sources``: paths of files, folders, datasets.

    Raises:
        FileNotFoundError / ValueError: a path is missing or its format unknown.
        RecordError: with ``strict``, the first bad record.
        DatasetError: no crystal at all could be read (the message lists the first reasons).
    """
    from crysdiff.io import resolve

    if isinstance(sources, (str, Path)):
        sources = [sources]
    resolved = resolve(list(sources), format=format)
    if not resolved:
        raise DatasetError(f"no structure files found in {', '.join(map(str, sources))}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    digests = _Digests(root)
    keys = [_part_key(s, settings, format, digests) for s in resolved]
    digests.save()
    missing = [k for k, key in enumerate(keys) if not (root / key / "meta.json").is_file()]
    if strict:  # a cached part with skipped records must fail a strict open as well
        for k, key in enumerate(keys):
            if k not in missing:
                skipped = json.loads((root / key / "meta.json").read_text())["skipped"]
                if skipped:
                    first = skipped[0]
                    raise RecordError(first["source"], first["record"], first["reason"])
    if missing:
        _remove_stale_tmp(root)
        todo = [resolved[k] for k in missing]
        count = workers if workers is not None else (os.cpu_count() or 1)
        _build(todo, [keys[k] for k in missing], root, settings, strict, max(1, count), progress)
    cache = CrystalCache([root / key for key in keys])
    if cache.num_crystals == 0:
        reasons = "; ".join(f"{e['source']} [{e['record']}]: {e['reason']}" for e in cache.skipped[:3])
        raise DatasetError(
            f"no usable crystal in {', '.join(map(str, sources))} ({len(cache.skipped)} records skipped"
            + (f"; first: {reasons}" if reasons else "") + ")"
        )
    return cache
