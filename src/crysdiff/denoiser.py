"""The CrysDiff denoiser: a periodic, O(3)-invariant message-passing network (paper Eq. 3).

Message passing over the batch's edges (``edge_index`` row 0 = source ``j``, row 1 = target ``i``)::

    m_ij = phi_m( h_i, h_j, g(L Lᵀ), fourier(f_j - f_i) )
    h_i <- h_i + phi_h( h_i, mean_j m_ij )

* ``g(L Lᵀ)`` — the 6 distinct entries of the Gram matrix (our ``lattice @ lattice.T``; the paper's
  ``LᵀL``), passed through ``sign(x) log(1 + |x|)`` so that Å² values of very different sizes (noisy
  lattices, 30 Å cells) enter the network at O(1) scale. Any function of the Gram matrix is
  invariant to rotations and reflections of the lattice.
* ``fourier(d)`` — ``sin(2πk d_a), cos(2πk d_a)`` for ``k = 1..K`` and each axis ``a``: ``6K``
  numbers, unchanged when ``d`` moves by an integer vector (periodic translation invariance) and
  when every atom moves by the same shift (``d`` itself is unchanged).
* ``phi_m = Linear ∘ act ∘ Linear``, ``phi_h = Linear ∘ act ∘ Linear`` (with an optional pre-layer
  LayerNorm on ``h``); ``h_0 = Linear(embed(Z), sinusoidal(t))``.

Heads (Eq. 3), with lattice rows = lattice vectors::

    eps_lattice = M(mean_i h_i) @ lattice      # [B, 3, 3], M is an MLP with a 3x3 output
    score_frac  = phi_F(h_i)                   # [N, 3], invariant

If ``lattice -> lattice @ Qᵀ`` (any orthogonal ``Q``), the features are unchanged and
``eps_lattice -> eps_lattice @ Qᵀ``: the noise estimate rotates with the lattice, as the noise of
the rotated lattice does. ``score_frac`` is the fractional-coordinate score in units of its RMS at
step ``t`` (see :mod:`crysdiff.diffusion`).

Why the fast path is fast (and exactly the same function as :meth:`CrysDiffEncoder.reference_forward`):

1. The first edge layer is split by input block, ``W [h_i, h_j, g, φ] = W_i h_i + W_j h_j + W_g g + W_f φ``:
   the node terms are computed per atom ``[N, H]`` (``W_i`` and ``W_j`` in one matmul) and then
   gathered; only ``W_f φ`` is per edge, and since ``φ`` does not depend on ``h`` it needs no input
   gradient (the reference's concatenated input does).
2. ``W_f φ`` is computed once per unordered atom pair, not per edge: ``φ(-d)`` has the same cosines
   and negated sines as ``φ(d)``, so the two edges of a pair are ``C ± S`` with ``S = W_sin sin``,
   ``C = W_cos cos``. On the symmetric all-pairs graph this halves the dominant matmul (and its
   weight gradient); the four layers' ``W_f`` run as one matmul, once per forward.
3. Fourier features come from per-atom phases by angle addition,
   ``sin(a - b) = sin a cos b - cos a sin b``: per pair a gather and a multiply, no ``sin``/``cos``.
4. The last layer of ``phi_m`` is linear, so it commutes with the mean over neighbours:
   ``mean_j (W act(x_ij) + b) = W mean_j act(x_ij) + b`` is applied per atom, not per edge.

Per edge and layer what remains is three gathers, the activation and a scatter-add.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from crysdiff.layers import ACTIVATIONS, DenoiserConfig, mlp, pool_mean, scatter_mean, signed_log, time_embedding

__all__ = ["DenoiserConfig", "CrysDiffEncoder", "CrysDiffDenoiser", "build_encoder", "gram_features", "time_embedding"]

_GRAM_ROWS, _GRAM_COLS = (0, 1, 2, 0, 0, 1), (0, 1, 2, 1, 2, 2)


def gram_features(lattice: torch.Tensor) -> torch.Tensor:
    """``[B, 6]`` rotation/reflection-invariant lattice features: signed log of the Gram entries."""
    gram = lattice @ lattice.transpose(1, 2)  # [B, 3, 3], rows are lattice vectors
    entries = gram[:, _GRAM_ROWS, _GRAM_COLS]  # [B, 6]
    return signed_log(entries)


class _Layer(nn.Module):
    """One message-passing layer's weights; the two encoder paths use them differently."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        hidden, fourier = config.hidden_dim, 6 * config.num_frequencies
        self.norm = nn.LayerNorm(hidden) if config.layer_norm else nn.Identity()
        self.edge_in = nn.Linear(2 * hidden + 6 + fourier, hidden)  # input order [h_i, h_j, gram, fourier]
        self.edge_act = ACTIVATIONS[config.activation]()
        self.edge_out = nn.Linear(hidden, hidden)
        self.node_mlp = mlp(2 * hidden, hidden, hidden, config.activation)


class CrysDiffEncoder(nn.Module):
    """Atom states ``[N, H]`` of a (noisy) structure at time step ``t``; reusable for fine-tuning."""

    def __init__(self, config: DenoiserConfig = DenoiserConfig()):
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.atom_embedding = nn.Embedding(config.max_atomic_number + 1, hidden)  # indexed by Z; row 0 unused
        self.input = nn.Linear(hidden + config.time_dim, hidden)
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(hidden) if config.layer_norm else nn.Identity()
        self.register_buffer("frequencies", torch.arange(1, config.num_frequencies + 1, dtype=torch.float32), persistent=False)

    def _initial_state(self, batch, t: torch.Tensor) -> torch.Tensor:
        z = batch.atomic_numbers
        if int(z.max()) > self.config.max_atomic_number:
            raise ValueError(
                f"atomic number {int(z.max())} exceeds DenoiserConfig.max_atomic_number={self.config.max_atomic_number}"
            )
        dtype = self.input.weight.dtype
        time = time_embedding(t, self.config.time_dim, dtype)[batch.batch]  # [N, time_dim]
        return self.input(torch.cat([self.atom_embedding(z), time], dim=-1))  # [N, H]

    def _phases(self, frac_coords: torch.Tensor) -> torch.Tensor:
        return 2 * math.pi * frac_coords[:, :, None] * self.frequencies.to(frac_coords.dtype)  # [N, 3, K]

    def forward(self, batch, frac_coords: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor,
                *, all_layers: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Fast path (see the module docstring). Returns ``[N, H]``; with ``all_layers`` the list of
        the atom states entering each layer, then the final (normalised) states: ``num_layers + 1``
        tensors ``[N, H]``."""
        source, target = batch.edge_index  # [E] each
        hidden, num_atoms = self.config.hidden_dim, frac_coords.shape[0]
        degree = torch.bincount(target, minlength=num_atoms)  # [N]
        h = self._initial_state(batch, t)  # [N, H]
        # Geometry in the weights' precision, not h's: under bf16 autocast h is bf16, and phases of up
        # to 2π K f (f + n for an atom shifted by a lattice vector) need float32's mantissa.
        dtype = self.input.weight.dtype
        # The Fourier block once per atom pair, for every layer at once (see _fourier_terms).
        fourier_terms, edge_row = self._fourier_terms(frac_coords.to(dtype), source, target)
        gram = gram_features(lattice.to(dtype)).index_select(0, batch.batch)  # [N, 6]
        states = []
        for k, layer in enumerate(self.layers):
            states.append(h)
            w = layer.edge_in.weight
            hn = layer.norm(h)
            node = hn @ torch.cat([w[:, :hidden], w[:, hidden : 2 * hidden]]).T  # [N, 2H]: W_i h, W_j h in one matmul
            node_i = torch.addmm(layer.edge_in.bias, gram, w[:, 2 * hidden : 2 * hidden + 6].T).add_(node[:, :hidden])
            pre = fourier_terms[k].index_select(0, edge_row)  # [E, H]: W_f φ(f_j - f_i) of each edge
            pre = pre.add_(node_i.index_select(0, target)).add_(node[:, hidden:].index_select(0, source))  # in place
            message = layer.edge_out(scatter_mean(layer.edge_act(pre), target, degree))  # [N, H]
            h = h + layer.node_mlp(torch.cat([hn, message], dim=-1))
        return [*states, self.final_norm(h)] if all_layers else self.final_norm(h)

    def _fourier_terms(self, frac: torch.Tensor, source: torch.Tensor, target: torch.Tensor):
        """Every layer's Fourier term ``W_f φ(f_j - f_i)``, computed once per unordered atom pair.

        ``φ(-d)`` has the same cosines and negated sines as ``φ(d)``, so with ``W_f = [W_sin, W_cos]``
        the edges ``j -> i`` and ``i -> j`` need ``C ± S`` of one pair, ``S = W_sin sin``,
        ``C = W_cos cos``: the per-edge matmul runs over the ``U ≈ E/2`` pairs of the (symmetric,
        all-pairs) graph, for all layers in one GEMM. Edges without a reverse (kNN graphs of large
        cells) are pairs of their own, so any graph is handled; sines and cosines come from per-atom
        phases by angle addition, ``exp(iθ_j) conj(exp(iθ_i)) = exp(i(θ_j - θ_i))``.

        Returns ``(terms [L, 2U, H], edge_row [E])``: edge ``e``'s term in layer ``k`` is
        ``terms[k, edge_row[e]]`` (rows ``< U`` are ``C + S``, the others ``C - S``).
        """
        num_atoms, hidden = frac.shape[0], self.config.hidden_dim
        low, high = torch.minimum(source, target), torch.maximum(source, target)
        pairs, pair_of_edge = torch.unique(low * num_atoms + high, return_inverse=True)  # [U], [E]
        low, high = pairs // num_atoms, pairs % num_atoms  # pair u is the edge high -> low: d = f_high - f_low
        rotor = torch.polar(torch.ones_like(frac[:, :1]).expand(-1, 3 * self.config.num_frequencies),
                            self._phases(frac).flatten(1))  # [N, 3K] complex
        pair = rotor.index_select(0, high) * rotor.index_select(0, low).conj()  # [U, 3K]
        fourier = 6 * self.config.num_frequencies
        start = 2 * hidden + 6
        w_sin = torch.cat([layer.edge_in.weight[:, start : start + fourier // 2] for layer in self.layers])  # [L*H, 3K]
        w_cos = torch.cat([layer.edge_in.weight[:, start + fourier // 2 :] for layer in self.layers])
        sines, cosines = pair.imag @ w_sin.T, pair.real @ w_cos.T  # [U, L*H] each: the only per-pair matmuls
        terms = torch.cat([cosines + sines, cosines - sines]).view(2 * pairs.shape[0], len(self.layers), hidden)
        reversed_edge = (source == low.index_select(0, pair_of_edge)) & (source != target)  # edge low -> high: d = -d_u
        return terms.transpose(0, 1), pair_of_edge + pairs.shape[0] * reversed_edge

    def reference_forward(self, batch, frac_coords: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The straightforward path: per edge, concatenate ``[h_i, h_j, gram, fourier]`` and run the
        edge MLP, then average the messages. Same weights and same function as :meth:`forward`;
        kept as the specification the fast path is tested against and as the benchmark baseline."""
        source, target = batch.edge_index
        num_atoms = frac_coords.shape[0]
        degree = torch.bincount(target, minlength=num_atoms)
        h = self._initial_state(batch, t)
        dtype = self.input.weight.dtype  # as in forward: geometry in the weights' precision
        frac = frac_coords.to(dtype)
        d = frac.index_select(0, source) - frac.index_select(0, target)  # [E, 3] f_j - f_i
        angle = self._phases(d).flatten(1)  # [E, 3K]
        fourier = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)  # [E, 6K]
        gram = gram_features(lattice.to(dtype)).index_select(0, batch.batch).index_select(0, target)  # [E, 6]
        for layer in self.layers:
            hn = layer.norm(h)
            edge_input = torch.cat([hn.index_select(0, target), hn.index_select(0, source), gram, fourier], dim=-1)  # [E, 2H+6+6K]
            messages = layer.edge_out(layer.edge_act(layer.edge_in(edge_input)))  # [E, H]
            message = scatter_mean(messages, target, degree)
            h = h + layer.node_mlp(torch.cat([hn, message], dim=-1))
        return self.final_norm(h)


def build_encoder(config: DenoiserConfig) -> nn.Module:
    """The encoder named by ``config.kind``: ``(batch, frac_coords, lattice, t) -> [N, H]``."""
    if config.kind == "cartesian":
        from crysdiff.cartesian import CartesianEncoder  # imported only when asked for

        return CartesianEncoder(config)
    return CrysDiffEncoder(config)


class CrysDiffDenoiser(nn.Module):
    """Encoder plus the lattice-noise and coordinate-score heads (paper Eq. 3).

    The encoder is the one named by ``config.kind`` (:func:`build_encoder`); the heads are the same
    for both kinds. With the non-equivariant encoder ``eps_lattice`` no longer rotates with the
    lattice, since ``M(mean h)`` then depends on the orientation.
    """

    def __init__(self, config: DenoiserConfig = DenoiserConfig()):
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.encoder = build_encoder(config)
        self.lattice_head = mlp(hidden, hidden, 9, config.activation)
        self.score_head = mlp(hidden, hidden, 3, config.activation)

    def forward(
        self, batch, frac_coords: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor, *, reference: bool = False
    ) -> dict[str, torch.Tensor]:
        """Denoise ``(frac_coords [N, 3], lattice [B, 3, 3])`` at steps ``t`` ``[B]`` (long, 1..T).

        The batch provides ``atomic_numbers``, ``batch``, ``num_atoms`` and ``edge_index``; its own
        coordinates and lattice are ignored. ``reference=True`` runs the slow reference encoder.

        Returns:
            ``dict(eps_lattice [B, 3, 3], score_frac [N, 3], node_features [N, H], crystal_features [B, H])``.
        """
        encode = self.encoder.reference_forward if reference else self.encoder
        nodes = encode(batch, frac_coords, lattice, t)  # [N, H]
        num_crystals = lattice.shape[0]
        crystal = pool_mean(nodes, batch.batch, num_crystals)  # [B, H]
        transform = self.lattice_head(crystal).view(num_crystals, 3, 3)
        return {
            "eps_lattice": transform @ lattice.to(nodes.dtype),  # rotates with the lattice rows
            "score_frac": self.score_head(nodes),
            "node_features": nodes,
            "crystal_features": crystal,
        }
