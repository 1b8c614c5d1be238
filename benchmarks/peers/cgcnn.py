"""A CGCNN-style crystal graph convolutional network (after Xie & Grossman, PRL 120, 145301, 2018).

A peer model for the property benchmarks, written for crysdiff from the paper's description:

* nodes are atoms, embedded from their atomic number (a learned table; the paper used a one-hot
  vector of element properties);
* edges link each atom to its nearest neighbours within a cutoff, periodic images included
  (:mod:`benchmarks.peers.neighbors`: 8 Å, 12 neighbours plus ties by default);
* an edge carries its length expanded on Gaussians ``exp(-(d - mu_k)² / width²)``;
* each convolution updates atom ``i`` from ``z_ij = [v_i, v_j, u_ij]`` over its edges with a
  gated filter, ``v_i <- softplus(v_i + BN(sum_j sigmoid(W_f z_ij + b_f) * softplus(W_s z_ij + b_s)))``
  (batch norm on the gate inputs as in the paper);
* the crystal vector is the mean of its atoms; an MLP gives one scalar.

The network predicts the *standardised* target; ``y_mean`` and ``y_std`` (buffers, saved with the
weights) map it back to the target's unit. It depends on distances only, so its prediction is
invariant to rotations, reflections and translations of the crystal and to the choice of cell
origin (tested in ``tests/test_cgcnn.py``).

Training from the command line: ``python -m benchmarks.peers.train_cgcnn --help``
(see :mod:`benchmarks.peers.train_cgcnn`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.peers.neighbors import NeighborSettings, NeighborTable

__all__ = ["CGCNNConfig", "CGCNN", "GaussianDistance", "GatedConv", "graph_batch", "GraphDataset", "batch_from_crystals"]

MAX_Z = 119


@dataclass(frozen=True)
class CGCNNConfig:
    """Network and graph settings (defaults close to the paper's: 3 convolutions of width 64,
    Gaussians every 0.2 Å up to the cutoff, one hidden layer of 128 after pooling).

    Attributes:
        hidden_dim: atom feature width ``H``.
        num_conv: gated convolution layers.
        head_dim, num_head_layers: the MLP after pooling.
        gaussian_step: spacing (and width) of the Gaussian distance expansion, Å.
        cutoff, max_neighbors: the neighbour graph (see :class:`NeighborSettings`).
    """

    hidden_dim: int = 64
    num_conv: int = 3
    head_dim: int = 128
    num_head_layers: int = 1
    gaussian_step: float = 0.2
    cutoff: float = 8.0
    max_neighbors: int = 12

    @property
    def neighbors(self) -> NeighborSettings:
        return NeighborSettings(cutoff=self.cutoff, max_neighbors=self.max_neighbors)


class GaussianDistance(nn.Module):
    """``d [E] -> exp(-(d - mu_k)² / step²) [E, G]`` with centres ``mu_k = 0, step, ..., cutoff``."""

    def __init__(self, cutoff: float, step: float):
        super().__init__()
        self.register_buffer("centres", torch.arange(0.0, cutoff + step / 2, step))  # [G]
        self.width = step

    @property
    def size(self) -> int:
        return int(self.centres.shape[0])

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((distance[:, None] - self.centres[None, :]) / self.width) ** 2)  # [E, G]


class GatedConv(nn.Module):
    """One CGCNN convolution: a sigmoid gate times a softplus core, summed over neighbours."""

    def __init__(self, hidden_dim: int, edge_dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * hidden_dim + edge_dim, 2 * hidden_dim)
        self.norm_edges = nn.BatchNorm1d(2 * hidden_dim)
        self.norm_sum = nn.BatchNorm1d(hidden_dim)

    def forward(self, atoms: torch.Tensor, edge_index: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        source, target = edge_index  # [E] each
        z = torch.cat([atoms[target], atoms[source], edges], dim=1)  # [E, 2H+G]
        gate, core = self.norm_edges(self.linear(z)).chunk(2, dim=1)  # [E, H] each
        messages = torch.sigmoid(gate) * F.softplus(core)  # [E, H]
        summed = torch.zeros_like(atoms).index_add_(0, target, messages)  # [N, H]
        return F.softplus(atoms + self.norm_sum(summed))


class CGCNN(nn.Module):
    """``forward(batch) -> dict(y [B] in the target's unit, y_normalised [B], crystal_features [B, H])``.

    ``batch`` needs ``atomic_numbers [N]``, ``edge_index [2, E]``, ``distance [E]`` (Å), ``batch [N]``
    and ``num_atoms [B]`` (see :func:`graph_batch`).
    """

    def __init__(self, config: CGCNNConfig = CGCNNConfig(), y_mean: float = 0.0, y_std: float = 1.0):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(MAX_Z, config.hidden_dim)
        self.expand = GaussianDistance(config.cutoff, config.gaussian_step)
        self.convs = nn.ModuleList([GatedConv(config.hidden_dim, self.expand.size) for _ in range(config.num_conv)])
        layers, width = [], config.hidden_dim
        for _ in range(config.num_head_layers):
            layers += [nn.Linear(width, config.head_dim), nn.Softplus()]
            width = config.head_dim
        self.head = nn.Sequential(*layers, nn.Linear(width, 1))
        self.register_buffer("y_mean", torch.tensor(float(y_mean), dtype=torch.float64))
        self.register_buffer("y_std", torch.tensor(float(y_std), dtype=torch.float64))

    def forward(self, batch) -> dict[str, torch.Tensor]:
        atoms = self.embedding(batch.atomic_numbers)  # [N, H]
        edges = self.expand(batch.distance)  # [E, G]
        for conv in self.convs:
            atoms = conv(atoms, batch.edge_index, edges)
        num_crystals = int(batch.num_atoms.shape[0])
        pooled = torch.zeros(num_crystals, atoms.shape[1], dtype=atoms.dtype, device=atoms.device)
        pooled = pooled.index_add_(0, batch.batch, atoms) / batch.num_atoms.clamp(min=1)[:, None].to(atoms.dtype)  # [B, H]
        y_normalised = self.head(F.softplus(pooled)).squeeze(-1)  # [B]
        y = y_normalised.double() * self.y_std + self.y_mean
        return {"y": y, "y_normalised": y_normalised, "crystal_features": pooled}


# --- graph batches ----------------------------------------------------------------------------------


def graph_batch(atomic_numbers: np.ndarray, num_atoms: np.ndarray, edge_index: np.ndarray, distance: np.ndarray,
                labels: np.ndarray | None = None, index: np.ndarray | None = None):
    """A PyG ``Batch`` for :class:`CGCNN`: ``atomic_numbers [N]``, ``num_atoms [B]``, ``batch [N]``,
    ``ptr [B+1]``, ``edge_index [2, E]`` (global atom indices), ``distance [E]`` float32, optional
    ``y [B]`` float64 and ``index [B]``."""
    from torch_geometric.data import Batch

    num_atoms = np.asarray(num_atoms, dtype=np.int64)
    fields = dict(
        atomic_numbers=torch.from_numpy(np.ascontiguousarray(atomic_numbers, dtype=np.int64)),
        num_atoms=torch.from_numpy(num_atoms),
        batch=torch.from_numpy(np.repeat(np.arange(num_atoms.shape[0], dtype=np.int64), num_atoms)),
        ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(num_atoms)]).astype(np.int64)),
        edge_index=torch.from_numpy(np.ascontiguousarray(edge_index, dtype=np.int64)),
        distance=torch.from_numpy(np.ascontiguousarray(distance, dtype=np.float32)),
    )
    if labels is not None:
        fields["y"] = torch.from_numpy(np.asarray(labels, dtype=np.float64))
    if index is not None:
        fields["index"] = torch.from_numpy(np.asarray(index, dtype=np.int64))
    out = Batch(**fields)
    out._num_graphs = int(num_atoms.shape[0])
    return out


class GraphDataset(torch.utils.data.Dataset):
    """``__getitems__(indices) -> graph_batch``: crystals gathered from a crysdiff cache, edges from a
    precomputed :class:`NeighborTable`, labels of ``target`` (if given)."""

    def __init__(self, cache, table: NeighborTable, target: str | None = None):
        self.cache, self.table, self.target = cache, table, target

    def __len__(self) -> int:
        return len(self.cache)

    def __getitems__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        z, _, _, counts = self.cache.gather(indices)
        atom_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        edge_index, distance = self.table.edges(indices, atom_start)
        labels = self.cache.subset_labels(indices, [self.target])[:, 0] if self.target else None
        return graph_batch(z, counts, edge_index, distance, labels=labels, index=indices)

    def __getitem__(self, index):
        return self.__getitems__([index])


def batch_from_crystals(crystals, neighbors: NeighborSettings = NeighborSettings(), target: str | None = None):
    """A :func:`graph_batch` of :class:`~crysdiff.crystal.Crystal` objects (convenient, not the fast path)."""
    from benchmarks.peers.neighbors import neighbor_list

    counts = np.array([c.num_atoms for c in crystals], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    edges, distances = [], []
    for crystal, first in zip(crystals, start):
        source, target_atom, _, distance = neighbor_list(crystal.frac_coords, crystal.lattice, neighbors)
        edges.append(np.stack([source, target_atom]) + first)
        distances.append(distance)
    labels = np.array([c.labels.get(target, np.nan) for c in crystals]) if target else None
    return graph_batch(np.concatenate([c.atomic_numbers for c in crystals]), counts, np.concatenate(edges, axis=1),
                       np.concatenate(distances), labels=labels, index=np.arange(len(crystals)))
