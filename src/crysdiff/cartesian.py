"""A non-equivariant encoder: the ablation "without the equivariant encoder" (paper Fig. 5, "w/o EGNN").

:class:`CartesianEncoder` is a cousin of :class:`crysdiff.denoiser.CrysDiffEncoder` with the same
width, depth, atom/time embedding, residual updates and Fourier features of ``f_j - f_i``. It
differs only in how it sees the geometry of the cell: where the equivariant encoder reads the
lattice through its Gram matrix ``L Lᵀ`` (unchanged by any rotation or reflection), this one reads
Cartesian vectors as they are written::

    m_ij = phi_m( h_i, h_j, s(vec L), s(r_ij), fourier(f_j - f_i) )
    h_i <- h_i + phi_h( h_i, mean_j m_ij )

* ``vec L`` — the 9 entries of the lattice matrix (rows = lattice vectors, Å);
* ``r_ij = (sin(2π d) / 2π) @ L`` with ``d = f_j - f_i`` — a periodic Cartesian displacement (Å):
  equal to the plain displacement ``d @ L`` to first order for close pairs, blind (as the
  equivariant encoder is) to moving one atom by a lattice vector and to a common shift of all
  atoms, and continuous. The minimum-image ``(d - round(d)) @ L`` would jump where two images are
  equally near (``d = ±1/2``, common in symmetric cells), so a tiny move would change the input;
* ``s(x) = sign(x) log(1 + |x|)`` elementwise, to keep Å values of very different cells at O(1).

Both inputs change when the lattice is rotated (``L -> L Qᵀ``, ``r_ij -> r_ij Qᵀ``) and nothing in
the network undoes that, so the atom states depend on the orientation of the cell: the network
has the same information as the equivariant one (the Gram matrix is a function of ``L``) but must
learn the rotational symmetry from data instead of having it built in. Same interface as the
equivariant encoder: ``(batch, frac_coords [N, 3], lattice [B, 3, 3], t [B]) -> [N, H]``.

The first edge layer is split by input block as in the equivariant fast path: node and lattice
terms per atom, the Fourier and displacement terms per edge, and the last linear layer of
``phi_m`` after the mean over neighbours.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from crysdiff.layers import ACTIVATIONS, DenoiserConfig, mlp, scatter_mean, signed_log, time_embedding

__all__ = ["CartesianEncoder"]

_LATTICE_FEATURES, _DISPLACEMENT_FEATURES = 9, 3


class _CartesianLayer(nn.Module):
    def __init__(self, config: DenoiserConfig):
        super().__init__()
        hidden, fourier = config.hidden_dim, 6 * config.num_frequencies
        self.norm = nn.LayerNorm(hidden) if config.layer_norm else nn.Identity()
        # input order [h_i, h_j, vec L, r_ij, fourier]
        self.edge_in = nn.Linear(2 * hidden + _LATTICE_FEATURES + _DISPLACEMENT_FEATURES + fourier, hidden)
        self.edge_act = ACTIVATIONS[config.activation]()
        self.edge_out = nn.Linear(hidden, hidden)
        self.node_mlp = mlp(2 * hidden, hidden, hidden, config.activation)


class CartesianEncoder(nn.Module):
    """Atom states ``[N, H]`` from Cartesian inputs; not invariant to rotations (see the module docstring)."""

    def __init__(self, config: DenoiserConfig = DenoiserConfig(kind="cartesian")):
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.atom_embedding = nn.Embedding(config.max_atomic_number + 1, hidden)  # indexed by Z; row 0 unused
        self.input = nn.Linear(hidden + config.time_dim, hidden)
        self.layers = nn.ModuleList(_CartesianLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(hidden) if config.layer_norm else nn.Identity()
        self.register_buffer("frequencies", torch.arange(1, config.num_frequencies + 1, dtype=torch.float32), persistent=False)

    def forward(self, batch, frac_coords: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Returns ``[N, H]``; ``batch`` provides ``atomic_numbers``, ``batch`` and ``edge_index``."""
        z = batch.atomic_numbers
        if int(z.max()) > self.config.max_atomic_number:
            raise ValueError(f"atomic number {int(z.max())} exceeds "
                             f"DenoiserConfig.max_atomic_number={self.config.max_atomic_number}")
        source, target = batch.edge_index  # [E] each
        hidden = self.config.hidden_dim
        dtype = self.input.weight.dtype
        degree = torch.bincount(target, minlength=frac_coords.shape[0])  # [N]
        time = time_embedding(t, self.config.time_dim, dtype)[batch.batch]  # [N, time_dim]
        h = self.input(torch.cat([self.atom_embedding(z), time], dim=-1))  # [N, H]

        frac, cell = frac_coords.to(dtype), lattice.to(dtype)
        d = frac.index_select(0, source) - frac.index_select(0, target)  # [E, 3] f_j - f_i
        edge_cell = cell.index_select(0, batch.batch.index_select(0, target))  # [E, 3, 3]
        angle = 2 * math.pi * d[:, :, None] * self.frequencies.to(dtype)  # [E, 3, K]; k = 1 first
        periodic = torch.sin(angle[:, :, 0]) / (2 * math.pi)  # [E, 3] ~ d for close pairs, period 1
        displacement = torch.einsum("ea,eab->eb", periodic, edge_cell)  # [E, 3] Å, orientation-dependent
        edge_features = torch.cat(
            [signed_log(displacement), torch.sin(angle).flatten(1), torch.cos(angle).flatten(1)], dim=-1
        )  # [E, 3 + 6K]
        cell_features = signed_log(cell.flatten(1)).index_select(0, batch.batch)  # [N, 9]
        lattice_block = slice(2 * hidden, 2 * hidden + _LATTICE_FEATURES)
        for layer in self.layers:
            w = layer.edge_in.weight
            hn = layer.norm(h)
            node_i = hn @ w[:, :hidden].T + cell_features @ w[:, lattice_block].T + layer.edge_in.bias  # [N, H]
            node_j = hn @ w[:, hidden : 2 * hidden].T  # [N, H]
            pre = torch.addmm(node_i.index_select(0, target), edge_features, w[:, lattice_block.stop :].T)  # [E, H]
            pre = pre + node_j.index_select(0, source)
            message = layer.edge_out(scatter_mean(layer.edge_act(pre), target, degree))  # [N, H]
            h = h + layer.node_mlp(torch.cat([hn, message], dim=-1))
        return self.final_norm(h)

    # CrysDiffDenoiser(reference=True) asks its encoder for the reference path; this encoder has one path
    reference_forward = forward
