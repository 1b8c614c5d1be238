"""A dataset: the parts of its sources, opened as one memory-mapped :class:`CrystalCache`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from crysdiff.cache.part import Part
from crysdiff.crystal import Crystal


class DatasetError(ValueError):
    """A dataset that cannot be used as a whole (nothing readable, an unknown target...)."""


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
        self.parts = [Part(f) for f in self._folders]
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

    def _locate(self, i: int) -> tuple[Part, int]:
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
