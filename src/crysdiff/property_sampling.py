"""Alg. 3: samples of the standardised property ``y_0`` from a noise head and the CARD process.

Two samplers with one signature, ``sampler(head, encodings, block_of, mu, diffusion, num_samples,
generator) -> [B, S]``:

* :func:`sample_chain`, for any :class:`~crysdiff.heads.NoiseHead`: the head runs on every sample
  at every step of :meth:`crysdiff.card.PropertyDiffusion.sample`;
* :func:`sample_affine`, for an :class:`~crysdiff.heads.AffineNoiseHead`: the head gives its
  coefficients for every step once per crystal, and the chain
  (:meth:`crysdiff.card.PropertyDiffusion.sample_affine`) costs a few multiply-adds per sample and step.

Both draw the same Markov chain from the same noise (``tests/test_card.py``). :func:`sampler_for`
picks between them by the head's type; :func:`sample_affine_moments`, for models with ``exact_mean``,
gives the affine chain's exact mean and variance (its end point is Gaussian) and draws the samples
from that Gaussian directly: the same distribution as the chain's, without its ``T`` steps. ``encodings`` ``[K, B, H]`` holds the structure
representations the chain reads and ``block_of`` ``[T+1]`` which of them each step uses (``K = 1``
and all zeros when the structure is fixed; ``K`` blocks of steps for the "without fixing
structures" ablation, :class:`crysdiff.property_model.NoisedStructureEncoder`).
"""

from __future__ import annotations

from typing import Callable

import torch

from crysdiff.card import PropertyDiffusion
from crysdiff.heads import AffineNoiseHead, NoiseHead

__all__ = ["sample_chain", "sample_affine", "sample_affine_moments", "sampler_for", "Sampler"]

Sampler = Callable[..., torch.Tensor]


@torch.no_grad()
def sample_chain(head: NoiseHead, encodings: torch.Tensor, block_of: torch.Tensor, mu: torch.Tensor,
                 diffusion: PropertyDiffusion, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, S]`` samples: the head evaluated on every sample at every step."""

    def eps_model(y_t, t):  # [B, S] -> [B, S]: the head on every sample
        batch_size, samples_per = y_t.shape
        z = encodings[int(block_of[t])]
        z = z[:, None, :].expand(-1, samples_per, -1).reshape(batch_size * samples_per, -1)
        t_vec = torch.full((batch_size * samples_per,), t, dtype=torch.long, device=y_t.device)
        mu_flat = mu[:, None].expand(-1, samples_per).reshape(-1).to(z.dtype)
        eps = head(z, y_t.reshape(-1).to(z.dtype), mu_flat, t_vec, diffusion.alpha_bar)
        return eps.reshape(batch_size, samples_per).double()

    return diffusion.sample(eps_model, mu, num_samples, generator=generator)


def chain_coefficients(head: AffineNoiseHead, encodings: torch.Tensor, block_of: torch.Tensor,
                       diffusion: PropertyDiffusion) -> torch.Tensor:
    """``[B, T+1, 3]`` float64: each step's coefficients from the encoding of its block."""
    per_encoding = [head.chain_coefficients(z, diffusion.timesteps, diffusion.alpha_bar) for z in encodings]
    index = block_of.to(encodings.device)[None, :, None].expand_as(per_encoding[0])
    return torch.stack(per_encoding).gather(0, index[None]).squeeze(0).double()


@torch.no_grad()
def sample_affine(head: AffineNoiseHead, encodings: torch.Tensor, block_of: torch.Tensor, mu: torch.Tensor,
                  diffusion: PropertyDiffusion, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, S]`` samples of the same chain from the head's per-step coefficients (computed once per crystal)."""
    coeffs = chain_coefficients(head, encodings, block_of, diffusion)
    return diffusion.sample_affine(coeffs, mu, num_samples, generator=generator)


@torch.no_grad()
def sample_affine_moments(head: AffineNoiseHead, encodings: torch.Tensor, block_of: torch.Tensor, mu: torch.Tensor,
                          diffusion: PropertyDiffusion, num_samples: int,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, S]`` samples of the affine chain's end point and its exact mean and variance ``[B]``
    (:meth:`~crysdiff.card.PropertyDiffusion.sample_affine_endpoint`): the samples are drawn from
    ``N(mean, var)``, the law of :func:`sample_affine`'s samples, in one step instead of ``T``."""
    coeffs = chain_coefficients(head, encodings, block_of, diffusion)
    return diffusion.sample_affine_endpoint(coeffs, mu, num_samples, generator=generator)


def sampler_for(head: NoiseHead) -> Sampler:
    """The fast path for heads declared affine (:class:`~crysdiff.heads.AffineNoiseHead`), else the general chain."""
    if isinstance(head, AffineNoiseHead):
        return sample_affine
    if isinstance(head, NoiseHead):
        return sample_chain
    raise TypeError(f"{type(head).__name__} is not a noise head; only noise heads are sampled")
