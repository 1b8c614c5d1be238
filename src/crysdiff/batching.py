"""Batches of crystals as PyTorch Geometric ``Batch`` objects, built vectorised.

A batch of ``B`` crystals with ``N`` atoms in all and ``E`` edges holds:

* ``atomic_numbers`` — ``[N]`` long, atomic numbers Z.
* ``frac_coords`` — ``[N, 3]`` float32 in [0, 1).
* ``lattice`` — ``[B, 3, 3]`` float32, rows are lattice vectors (Å).
* ``num_atoms`` — ``[B]`` long; ``batch`` — ``[N]`` long crystal index of each atom; ``ptr`` — ``[B+1]``.
* ``edge_index`` — ``[2, E]`` long, PyG convention: row 0 is the source atom ``j``, row 1 the
  target atom ``i`` that receives the message ``m_ij``. Indices are global within the batch.
* ``y`` — ``[B, T]`` float32 labels (NaN where missing), present when labels were requested.
* ``index`` — ``[B]`` long, position of each crystal in its dataset.

Edges. CrysDiff's message passing runs over *all pairs* of atoms in the cell, self-pairs
included (``f_j - f_i`` is only seen through periodic Fourier features, so the periodic image does
not matter; the self-pair is what lets a one-atom cell see its own lattice). All-pairs costs
``n²`` edges per crystal, which is fine for MP-like cells (median ~10 atoms) but not for a
4,640-atom COD cell (21.5 M edges). Crystals with more than ``max_dense_atoms`` atoms therefore
get a k-nearest-neighbour graph instead (``knn_neighbors`` nearest atoms by minimum-image
Cartesian distance, plus the self-pair), which keeps memory linear in ``n``. The strategy is a
property of the batch, not of the network: the denoiser just consumes ``edge_index``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Batch

__all__ = ["EdgeSettings", "all_pairs_edges", "knn_edges", "make_batch", "collate_crystals"]


@dataclass(frozen=True)
class EdgeSettings:
    """How edges are built. ``max_dense_atoms``: largest cell that gets all-pairs edges;
    ``knn_neighbors``: neighbours per atom for larger cells."""

    max_dense_atoms: int = 200
    knn_neighbors: int = 24


def all_pairs_edges(num_atoms: np.ndarray) -> np.ndarray:
    """All ordered pairs (self-pairs included) within each crystal, vectorised.

    Args:
        num_atoms: ``[B]`` atoms per crystal.
    Returns:
        ``[2, sum(n²)]`` int64 global (source, target) indices, crystals in order.
    """
    num_atoms = np.asarray(num_atoms, dtype=np.int64)
    atom_start = np.concatenate([[0], np.cumsum(num_atoms)[:-1]])  # [B]
    pairs = num_atoms * num_atoms  # [B]
    total = int(pairs.sum())
    crystal = np.repeat(np.arange(num_atoms.shape[0]), pairs)  # [E]
    edge_start = np.concatenate([[0], np.cumsum(pairs)[:-1]])
    local = np.arange(total, dtype=np.int64) - edge_start[crystal]  # [E] position within crystal
    n = num_atoms[crystal]
    target = local // n + atom_start[crystal]
    source = local % n + atom_start[crystal]
    return np.stack([source, target])


def knn_edges(frac_coords: np.ndarray, lattice: np.ndarray, k: int) -> np.ndarray:
    """k nearest neighbours (minimum image) of every atom of one crystal, plus self-pairs.

    Args:
        frac_coords: ``[n, 3]``; lattice: ``[3, 3]`` rows are lattice vectors.
    Returns:
        ``[2, E]`` int64 local (source, target) indices, unique pairs.
    """
    from scipy.spatial import cKDTree

    n = frac_coords.shape[0]
    k = min(k, n - 1)
    shifts = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=np.float64)
    cart = frac_coords.astype(np.float64) @ lattice
    images = (cart[None] + (shifts @ lattice)[:, None]).reshape(-1, 3)  # [27n, 3]
    # Query more than k image-points: one atom can appear as several images of the same neighbour.
    query = min(images.shape[0], 4 * k + 28)
    _, hit = cKDTree(images).query(cart, k=query)  # [n, query]
    neighbour = hit % n
    edges = _first_k_distinct(neighbour, k + 1)  # the self image is among the first hits
    self_pairs = np.stack([np.arange(n), np.arange(n)])
    edges = np.concatenate([edges[:, edges[0] != edges[1]], self_pairs], axis=1)
    return edges.astype(np.int64)


def _first_k_distinct(neighbour: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first ``k`` distinct values (rows are sorted by distance). Memory O(n·query)."""
    n, query = neighbour.shape
    order = np.argsort(neighbour, axis=1, kind="stable")
    sorted_vals = np.take_along_axis(neighbour, order, axis=1)
    first = np.ones_like(sorted_vals, dtype=bool)
    first[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    # position in the distance order of each value's first occurrence
    first_pos = np.where(first, order, query + 1)
    best = np.sort(first_pos, axis=1)[:, :k]  # the k earliest distinct hits
    valid = best <= query
    rows = np.repeat(np.arange(n)[:, None], k, axis=1)
    source = neighbour[rows[valid], np.minimum(best[valid], query - 1)]
    return np.stack([source, rows[valid]])


def make_batch(
    atomic_numbers: np.ndarray,
    frac_coords: np.ndarray,
    lattices: np.ndarray,
    num_atoms: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    index: np.ndarray | None = None,
    edges: EdgeSettings = EdgeSettings(),
) -> Batch:
    """A PyG ``Batch`` from flat arrays (see the module docstring for the fields).

    Args:
        atomic_numbers: ``[N]``; frac_coords: ``[N, 3]``; lattices: ``[B, 3, 3]``; num_atoms: ``[B]``;
        labels: ``[B, T]`` or None; index: ``[B]`` dataset positions or None.
    """
    num_atoms = np.asarray(num_atoms, dtype=np.int64)
    n_crystals = num_atoms.shape[0]
    atom_start = np.concatenate([[0], np.cumsum(num_atoms)])  # [B+1]
    big = num_atoms > edges.max_dense_atoms
    if not big.any():
        edge_index = all_pairs_edges(num_atoms)
    else:
        parts = []
        small_counts = np.where(big, 0, num_atoms)
        dense = all_pairs_edges(small_counts)  # zero-atom entries give no edges
        # all_pairs_edges indexes atoms as if big crystals were empty: shift to real positions
        owner = np.searchsorted(np.cumsum(small_counts), dense[1], side="right")
        offset = atom_start[:-1] - np.concatenate([[0], np.cumsum(small_counts)[:-1]])
        parts.append(dense + offset[owner])
        for b in np.flatnonzero(big):
            lo, hi = atom_start[b], atom_start[b + 1]
            parts.append(knn_edges(frac_coords[lo:hi], lattices[b], edges.knn_neighbors) + lo)
        edge_index = np.concatenate(parts, axis=1)
    fields = dict(
        atomic_numbers=torch.from_numpy(np.ascontiguousarray(atomic_numbers, dtype=np.int64)),
        frac_coords=torch.from_numpy(np.ascontiguousarray(frac_coords, dtype=np.float32)),
        lattice=torch.from_numpy(np.ascontiguousarray(lattices, dtype=np.float32)).reshape(n_crystals, 3, 3),
        num_atoms=torch.from_numpy(num_atoms),
        batch=torch.from_numpy(np.repeat(np.arange(n_crystals, dtype=np.int64), num_atoms)),
        ptr=torch.from_numpy(atom_start),
        edge_index=torch.from_numpy(np.ascontiguousarray(edge_index, dtype=np.int64)),
    )
    if labels is not None:
        fields["y"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)).reshape(n_crystals, -1)
    if index is not None:
        fields["index"] = torch.from_numpy(np.asarray(index, dtype=np.int64))
    out = Batch(**fields)
    out._num_graphs = n_crystals
    return out


def collate_crystals(crystals, label_names: list[str] | None = None, edges: EdgeSettings = EdgeSettings()) -> Batch:
    """A batch from a list of :class:`~crysdiff.crystal.Crystal` objects (convenient, not the fast path)."""
    num_atoms = np.array([c.num_atoms for c in crystals], dtype=np.int64)
    labels = None
    if label_names:
        labels = np.array([[c.labels.get(k, np.nan) for k in label_names] for c in crystals], dtype=np.float64)
    return make_batch(
        np.concatenate([c.atomic_numbers for c in crystals]),
        np.concatenate([c.frac_coords for c in crystals]),
        np.stack([c.lattice for c in crystals]),
        num_atoms,
        labels=labels,
        index=np.arange(len(crystals)),
        edges=edges,
    )
