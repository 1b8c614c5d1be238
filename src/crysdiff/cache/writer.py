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
from crysdiff.crystal import Crystal, Notice, RecordError, ValidationSettings


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
