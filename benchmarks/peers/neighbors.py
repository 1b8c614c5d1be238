"""Periodic neighbour lists within a cutoff, for graph baselines (CGCNN-style models).

CrysDiff's own network uses all pairs of atoms in the cell (:mod:`crysdiff.batching`); message
passing in the style of CGCNN instead links each atom to its nearest neighbours within a radius,
periodic images included. This module builds those lists with NumPy, one crystal at a time, and
stores them for a whole dataset in flat arrays (:class:`NeighborTable`), so each crystal's list is
built once per run, not once per epoch.

Method. Atoms are wrapped into the cell, so a fractional difference ``f_j - f_i`` lies in
``(-1, 1)``. A periodic image ``f_j + s`` (``s`` integer) can lie within ``cutoff`` of ``f_i`` only
if ``|f_j - f_i + s|_a * d_a <= cutoff`` along every lattice direction ``a``, where ``d_a`` is the
spacing of the lattice planes normal to ``a`` (volume / |b × c|). Hence ``|s_a| <= ceil(cutoff / d_a)``:
all image shifts in that box are enumerated and every (image, source, target) distance computed at
once, in chunks of target atoms so memory stays bounded for big cells.

Neighbour caps. With ``max_neighbors = k`` each atom keeps its ``k`` nearest neighbours within the
cutoff, **plus any neighbour tied with the k-th** (within ``tie_tolerance`` Å). Cutting inside a
shell of equal distances would make the graph depend on floating-point noise (a rotated copy of the
same crystal could keep different atoms of the shell), so the graph would no longer be a function
of the geometry alone.

Conventions: lattice rows are lattice vectors in Å; Cartesian = fractional @ lattice; edges follow
PyG, ``source`` (row 0) is the neighbour ``j`` and ``target`` (row 1) the atom ``i`` that receives
the message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["NeighborSettings", "neighbor_list", "NeighborTable", "build_neighbor_table"]


@dataclass(frozen=True)
class NeighborSettings:
    """``cutoff`` radius in Å; ``max_neighbors`` per atom (``0`` = all within the cutoff);
    ``tie_tolerance`` in Å: neighbours this close to the k-th distance are kept too."""

    cutoff: float = 8.0
    max_neighbors: int = 12
    tie_tolerance: float = 1e-3


def _image_shifts(lattice: np.ndarray, cutoff: float) -> np.ndarray:
    """``[K, 3]`` integer shifts with ``|s_a| <= ceil(cutoff / d_a)`` (``d_a``: plane spacing)."""
    volume = abs(np.linalg.det(lattice))
    cross = np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]])  # [3, 3] row a: b × c (cyclic)
    spacing = volume / np.linalg.norm(cross, axis=1)  # [3]
    reach = np.ceil(cutoff / spacing - 1e-9).astype(np.int64)  # [3]
    axes = [np.arange(-r, r + 1) for r in reach]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def neighbor_list(frac_coords: np.ndarray, lattice: np.ndarray, settings: NeighborSettings = NeighborSettings(),
                  chunk_pairs: int = 2_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbours of every atom of one crystal within ``settings.cutoff``, periodic images included.

    Args:
        frac_coords: ``[n, 3]`` fractional coordinates (wrapped into ``[0, 1)`` here).
        lattice: ``[3, 3]``, rows are lattice vectors (Å).
        chunk_pairs: distances computed at once (bounds memory for big cells).
    Returns:
        ``source [E]``, ``target [E]`` (int64, local atom indices), ``image [E, 3]`` (int64: the source
        is the image ``frac_coords[source] + image``) and ``distance [E]`` (float64, Å); sorted by
        target, then distance. A self-image (same atom, non-zero shift) is a neighbour; the atom
        itself at zero shift is not.
    """
    frac = np.asarray(frac_coords, dtype=np.float64)
    frac = frac - np.floor(frac)  # [n, 3]
    lattice = np.asarray(lattice, dtype=np.float64)
    n = frac.shape[0]
    shifts = _image_shifts(lattice, settings.cutoff)  # [K, 3]
    cart = frac @ lattice  # [n, 3]
    images = (cart[None, :, :] + (shifts @ lattice)[:, None, :]).reshape(-1, 3)  # [K*n, 3] image k of atom j at k*n+j
    step = max(1, chunk_pairs // max(1, images.shape[0]))
    cutoff2 = settings.cutoff * settings.cutoff
    image_norm2 = np.einsum("mx,mx->m", images, images)  # [K*n]
    parts = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        # |image - atom|² expanded as a matrix product (no [t, K*n, 3] temporary); exact distances
        # of the pairs kept are recomputed below from difference vectors
        approx = image_norm2[None, :] - 2.0 * cart[lo:hi] @ images.T + np.einsum("tx,tx->t", cart[lo:hi], cart[lo:hi])[:, None]
        target, point = np.nonzero(approx <= cutoff2 + 1e-6)
        delta = images[point] - cart[lo + target]  # [e, 3]
        dist2 = np.einsum("ex,ex->e", delta, delta)
        keep = (dist2 <= cutoff2) & (dist2 > 1e-16)  # drop the atom itself (zero shift, zero distance)
        parts.append((target[keep] + lo, point[keep], np.sqrt(dist2[keep])))
    target = np.concatenate([p[0] for p in parts])
    point = np.concatenate([p[1] for p in parts])
    distance = np.concatenate([p[2] for p in parts])
    order = np.lexsort((distance, target))  # by target, then distance
    target, point, distance = target[order], point[order], distance[order]
    if settings.max_neighbors > 0 and target.size:
        target, point, distance = _cap(target, point, distance, n, settings.max_neighbors, settings.tie_tolerance)
    return point % n, target, shifts[point // n], distance


def _cap(target, point, distance, n, k, tol):
    """Keep, per target (rows sorted by target then distance), the k nearest plus ties with the k-th."""
    counts = np.bincount(target, minlength=n)  # [n]
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [n]
    rank = np.arange(target.size) - start[target]  # [E] 0 = nearest
    kth = np.full(n, np.inf)
    full = counts >= k
    kth[full] = distance[start[full] + k - 1]
    keep = (rank < k) | (distance <= kth[target] + tol)
    return target[keep], point[keep], distance[keep]


class NeighborTable:
    """Neighbour lists of some crystals of a dataset, in flat arrays.

    Attributes:
        positions: ``[M]`` dataset indices covered; ``edge_offset [M+1]`` into the edge arrays.
        source, target: ``[E_total]`` int32 local atom indices; distance: ``[E_total]`` float32 (Å).
        seconds: time spent building.
    """

    def __init__(self, positions, edge_offset, source, target, distance, settings: NeighborSettings, seconds: float):
        self.positions = np.asarray(positions, dtype=np.int64)
        self.edge_offset, self.source, self.target, self.distance = edge_offset, source, target, distance
        self.settings, self.seconds = settings, seconds
        self._row = {int(p): k for k, p in enumerate(self.positions)}

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows of the table holding dataset ``indices`` (KeyError for a crystal not covered)."""
        try:
            return np.fromiter((self._row[int(i)] for i in indices), dtype=np.int64, count=len(indices))
        except KeyError as error:
            raise KeyError(f"crystal {error.args[0]} has no neighbour list in this table") from None

    def edges(self, indices: np.ndarray, atom_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``edge_index [2, E]`` (global atom indices given each crystal's first atom ``atom_start [B]``)
        and ``distance [E]`` for the crystals ``indices``, in that order. Vectorised."""
        rows = self.rows(indices)
        lo, hi = self.edge_offset[rows], self.edge_offset[rows + 1]
        counts = hi - lo  # [B]
        rank = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = np.repeat(lo, counts) + rank  # [E]
        shift = np.repeat(np.asarray(atom_start, dtype=np.int64), counts)
        edge_index = np.stack([self.source[flat] + shift, self.target[flat] + shift])
        return edge_index, self.distance[flat]


def build_neighbor_table(cache, indices, settings: NeighborSettings = NeighborSettings(),
                         batch: int = 512) -> NeighborTable:
    """Neighbour lists of the crystals ``indices`` of ``cache`` (a :class:`~crysdiff.cache.CrystalCache`).

    Crystals are gathered from the memory-mapped cache ``batch`` at a time; each list is built by
    :func:`neighbor_list`. A crystal whose atoms have no neighbour within the cutoff simply has no
    edges (its atoms keep their embeddings).
    """
    started = time.perf_counter()
    indices = np.asarray(indices, dtype=np.int64)
    sources, targets, distances, counts = [], [], [], np.zeros(indices.shape[0], dtype=np.int64)
    for lo in range(0, indices.shape[0], batch):
        chunk = indices[lo:lo + batch]
        z, frac, lattices, atoms = cache.gather(chunk)
        atom_start = np.concatenate([[0], np.cumsum(atoms)])
        for b in range(chunk.shape[0]):
            s, t, _, d = neighbor_list(frac[atom_start[b]:atom_start[b + 1]], lattices[b], settings)
            sources.append(s.astype(np.int32))
            targets.append(t.astype(np.int32))
            distances.append(d.astype(np.float32))
            counts[lo + b] = s.shape[0]
    offset = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    return NeighborTable(
        indices, offset,
        np.concatenate(sources) if sources else empty_i,
        np.concatenate(targets) if targets else empty_i,
        np.concatenate(distances) if distances else empty_f,
        settings, time.perf_counter() - started,
    )
