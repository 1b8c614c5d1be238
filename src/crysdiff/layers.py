"""Pieces the networks share: the encoders' config, activations, the two-layer MLP, mean pooling,
the sinusoidal time embedding and the signed log.

Both encoders (:class:`crysdiff.denoiser.CrysDiffEncoder` and the ablation's
:class:`crysdiff.cartesian.CartesianEncoder`) and the property heads (:mod:`crysdiff.heads`) build
on these, so neither encoder module imports the other's private names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DenoiserConfig", "ACTIVATIONS", "ENCODER_KINDS", "mlp", "scatter_mean", "pool_mean", "time_embedding",
           "signed_log"]

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}
ENCODER_KINDS = ("equivariant", "cartesian")


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of the denoiser.

    Attributes:
        hidden_dim: width ``H`` of the atom states and of every MLP.
        num_layers: message-passing layers.
        num_frequencies: ``K``, Fourier frequencies per axis (``6K`` edge features).
        time_dim: width of the sinusoidal time-step embedding.
        max_atomic_number: largest Z the atom embedding accepts.
        activation: ``"silu"``, ``"gelu"`` or ``"relu"``.
        layer_norm: LayerNorm on the atom states before each layer and before the heads.
        kind: ``"equivariant"`` (default, :class:`CrysDiffEncoder`, invariant to rotations of the
            lattice) or ``"cartesian"`` (:class:`crysdiff.cartesian.CartesianEncoder`, a
            non-equivariant cousin of the same width and depth fed Cartesian vectors: the ablation
            "without the equivariant encoder").
    """

    hidden_dim: int = 128
    num_layers: int = 4
    num_frequencies: int = 64
    time_dim: int = 64
    max_atomic_number: int = 118
    activation: str = "silu"
    layer_norm: bool = True
    kind: str = "equivariant"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}: expected one of {sorted(ACTIVATIONS)}")
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"unknown encoder kind {self.kind!r}: expected one of {', '.join(ENCODER_KINDS)}")


def mlp(in_dim: int, hidden_dim: int, out_dim: int, activation: str) -> nn.Sequential:
    """``Linear ∘ act ∘ Linear``."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), ACTIVATIONS[activation](), nn.Linear(hidden_dim, out_dim))


def scatter_mean(values: torch.Tensor, index: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[E, H]`` grouped by ``index`` ``[E]``; ``count`` ``[M]`` is the group sizes.
    Summed in at least float32: under bf16 autocast the messages are bf16, whose 8-bit mantissa loses
    most of a sum over hundreds of neighbours."""
    dtype = torch.promote_types(values.dtype, torch.float32)
    out = values.new_zeros(count.shape[0], values.shape[1], dtype=dtype).index_add_(0, index, values.to(dtype))
    return out / count.clamp(min=1).to(dtype)[:, None]


def pool_mean(node_features: torch.Tensor, batch_index: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """``[B, H]`` mean of ``[N, H]`` atom states per crystal (summed in at least float32)."""
    return scatter_mean(node_features, batch_index, torch.bincount(batch_index, minlength=num_crystals))


def time_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32,
                   max_period: float = 10000.0) -> torch.Tensor:
    """``[..., dim]`` Transformer sinusoidal embedding of (integer or real) time steps ``t`` ``[...]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)
    angles = t.to(dtype)[..., None] * freqs  # [..., half]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) log(1 + |x|)``, elementwise."""
    return torch.sign(x) * torch.log1p(x.abs())
