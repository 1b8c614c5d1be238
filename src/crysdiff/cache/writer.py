"""Writing one part: crystals streamed into a temporary folder, renamed into place when complete."""

from __future__ import annotations

import json
import os
import shutil
import time
from array import array
from dataclasses import asdict
from pathlib import Path

import numpy as np

from crysdiff.cache.part import CACHE_VERSION, file_records
from crysdiff.cells import AS_GIVEN, CellConfig, Reduced
from crysdiff.crystal import Notice, RecordError, ValidationSettings


class Packed:
    """The results of one task as a few arrays, so a worker sends and the writer stores them in a few
    calls instead of one object per crystal: the crystals' atoms, coordinates, lattices, ids and labels
    (``label_rows``/``label_columns`` index ``label_names``), the cell bookkeeping of canonical cells,
    and the records that are not crystals (errors, notices) in their order."""

    def __init__(self, items) -> None:
        crystals, given, fallback, self.fallbacks, self.others = [], [], [], [], []
        self.records = 0
        for item in items:
            if isinstance(item, Notice):
                self.others.append(item)
                continue
            self.records += 1
            if isinstance(item, RecordError):
                self.others.append(item)
                continue
            if isinstance(item, Reduced):
                given.append(item.given_atoms)
                fallback.append(1 if item.fallback else 0)
                if item.fallback:
                    self.fallbacks.append({"source": item.crystal.source, "record": item.crystal.record or item.crystal.id,
                                           "reason": item.fallback})
                item = item.crystal
            crystals.append(item)
        self.given_atoms = np.array(given, dtype=np.int64) if given else None  # None: cells as given
        self.fallback = np.array(fallback, dtype=np.int8)
        self.counts = np.array([c.num_atoms for c in crystals], dtype=np.int64)
        self.z = np.concatenate([np.asarray(c.atomic_numbers, dtype=np.uint8) for c in crystals] or [np.zeros(0, np.uint8)])
        self.frac = np.concatenate([np.asarray(c.frac_coords, dtype=np.float64) for c in crystals] or [np.zeros((0, 3))])
        self.lattice = np.array([np.asarray(c.lattice, dtype=np.float64) for c in crystals], dtype=np.float64)
        encoded = [str(c.id).encode("utf-8") for c in crystals]
        self.ids = b"".join(encoded)
        self.id_lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        names: dict[str, int] = {}
        rows, columns, values = [], [], []
        for row, crystal in enumerate(crystals):
            for name, value in crystal.labels.items():
                rows.append(row), columns.append(names.setdefault(name, len(names))), values.append(value)
        self.label_names = list(names)
        self.label_rows = np.array(rows, dtype=np.int64)
        self.label_columns = np.array(columns, dtype=np.int64)
        self.label_values = np.array(values, dtype=np.float64)



class PartWriter:
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

    def add(self, task: Packed, slot: int) -> None:
        """The results of one task of source ``slot`` (its position in the group), packed by the worker."""
        for item in task.others:
            if isinstance(item, Notice):  # kept once per file and reason
                if (item.source, item.reason) not in {(n["source"], n["reason"]) for n in self.notices}:
                    self.notices.append(item.as_dict())
                continue
            if self.strict:
                raise item
            self.skipped.append(item.as_dict())
        self.records += task.records
        if not len(task.counts):
            return
        if task.given_atoms is not None:
            self.given_atoms.extend(task.given_atoms.tolist())
            self.cell_fallback.extend(task.fallback.tolist())
            self.fallbacks.extend(task.fallbacks)
        files = self.files
        files["z"].write(task.z.tobytes())
        files["frac"].write(task.frac.tobytes())
        files["lattice"].write(task.lattice.tobytes())
        files["ids"].write(task.ids)
        first = len(self.counts)
        self.id_lengths.extend(task.id_lengths.tolist())
        self.counts.extend(task.counts.tolist())
        self.source_local.extend([slot] * len(task.counts))
        if len(task.label_rows):
            column = np.array([self.label_names.setdefault(name, len(self.label_names)) for name in task.label_names])
            cells = np.stack([task.label_rows + first, column[task.label_columns]], axis=1).astype(np.int64)
            files["label_cells"].write(cells.tobytes())
            files["label_values"].write(task.label_values.tobytes())

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
        files = file_records(self.tmp, [f"{name}.npy" for name in arrays])
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


def remove_stale_tmp(root: Path) -> None:
    for tmp in root.glob(".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)

