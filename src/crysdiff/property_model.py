"""The fine-tuned network: an encoder, a property head and the target's standardisation.

A :class:`PropertyModel` is the pre-trained encoder plus a property head (composition, not a copied
class): the encoder reads the clean structure once, its atom states are mean-pooled into
``crystal_features`` ``[B, H]``, and the head runs the CARD chain on the standardised target.

* Training (Alg. 2): ``y_0`` standardised with the training mean and std (stored in the
  checkpoint); the noise loss is :meth:`crysdiff.card.PropertyDiffusion.loss`. The prior mean
  ``μ`` is the training mean (``0`` in standardised units, the paper) or CARD's learned prior
  ``f(x)`` (a :class:`~crysdiff.heads.ValueMLP` trained with L1 alongside).
* Inference (Alg. 3): the encoder runs once per crystal; the sampler the head's type calls for
  (:func:`crysdiff.property_sampling.sampler_for`) draws ``S`` samples through the head only. The
  samples' mean is the prediction; their spread and 2.5/97.5 percentiles, clipped at the model's
  lower bound and moved by its interval scale (:func:`crysdiff.uncertainty.sample_summary`), are
  the uncertainty. Both numbers are part of the model's state (buffers saved with its weights).
  With ``exact_mean`` (fine-tuning's ``exact_mean``, on for models trained since 2026-12-02) an
  affine head's prediction is instead the chain's exact mean, the limit of infinitely many
  samples: the chain is linear-Gaussian, so its end point is ``N(m, v)`` in closed form
  (:meth:`crysdiff.card.PropertyDiffusion.affine_moments`), clipped at the lower bound as the
  samples are (:func:`crysdiff.uncertainty.clipped_gaussian_mean`). The mean then does not depend
  on the seed or ``S``; the spread and interval still come from ``S`` samples, drawn from that
  ``N(m, v)`` directly (the chain's own law, without its ``T`` steps).
* ``head.kind = "regression"``: the plain L1 regression baseline on the same encoder.

Two ablations of paper Fig. 5 are wrappers of the encoder, so training and prediction have one path:

* **Without joint diffusion**: :class:`AveragedEncoder`, the mean of two separately pre-trained
  encoders' atom states (one lattice-only, one coordinates-only).
* **Without fixing structures**: :class:`NoisedStructures` (the pre-training
  :class:`~crysdiff.diffusion.JointDiffusion`) diffuses the structure together with ``y``. In
  training, the property step ``t`` is mapped to the structure step ``s`` of the same relative
  position (:func:`structure_timestep`), ``(F, L)`` is noised to ``s`` and the encoder sees
  ``(F_s, L_s, s)``; the loss stays the ``ε_y`` loss alone. At inference the chain's ``T`` steps
  are cut into ``structure_encodings`` blocks; each block gets one encoding of the structure noised
  (from the clean input) to the step of the block's middle, shared by the ``S`` samples. The
  default :class:`FixedStructure` is one block of all steps with the clean structure at step 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from crysdiff.card import PropertyDiffusion
from crysdiff.heads import AffineNoiseHead, HeadConfig, NoiseHead, ValueMLP, build_head
from crysdiff.layers import pool_mean
from crysdiff.property_sampling import sample_affine_moments, sampler_for
from crysdiff.uncertainty import clipped_gaussian_mean, sample_summary

__all__ = ["PropertyModel", "AveragedEncoder", "FixedStructure", "NoisedStructures", "pool_mean",
           "structure_timestep", "structure_blocks", "noise_structure"]


class AveragedEncoder(nn.Module):
    """The mean of several encoders' atom states ``[N, H]`` (ablation "without joint diffusion").

    Every encoder has the interface ``(batch, frac_coords, lattice, t) -> [N, H]`` and the same ``H``;
    all of them are trained in fine-tuning unless the encoder is frozen.
    """

    def __init__(self, encoders: Sequence[nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)

    def forward(self, batch, frac_coords: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        states = [encoder(batch, frac_coords, lattice, t) for encoder in self.encoders]  # each [N, H]
        return torch.stack(states).mean(dim=0)


def structure_timestep(t: torch.Tensor, property_steps: int, structure_steps: int) -> torch.Tensor:
    """The structure step ``s = ceil(t T_s / T_y)`` in ``1..T_s`` at the same relative position as the
    property step ``t`` in ``1..T_y`` (long, any shape; the identity when ``T_s = T_y``)."""
    return (t * structure_steps + property_steps - 1) // property_steps


def structure_blocks(timesteps: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous blocks ``(first, last)`` of nearly equal size covering steps ``1..timesteps``."""
    count = max(1, min(count, timesteps))
    edges = torch.linspace(0, timesteps, count + 1, dtype=torch.float64).round().long().tolist()
    return [(lo + 1, hi) for lo, hi in zip(edges[:-1], edges[1:])]


def noise_structure(batch, diffusion, t: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F_t [N, 3], L_t [B, 3, 3])`` drawn from ``q(F_t, L_t | F_0, L_0)`` of the pre-training
    :class:`~crysdiff.diffusion.JointDiffusion` at structure steps ``t`` ``[B]`` (both fields noised)."""
    lattice0, frac0 = batch.lattice, batch.frac_coords
    eps_lattice = torch.randn(lattice0.shape, generator=generator, device=lattice0.device, dtype=lattice0.dtype)
    eps_frac = torch.randn(frac0.shape, generator=generator, device=frac0.device, dtype=frac0.dtype)
    frac_t, _ = diffusion.noise_frac(frac0, t[batch.batch], eps_frac)
    return frac_t, diffusion.noise_lattice(lattice0, t, eps_lattice)


class FixedStructure:
    """The paper: the encoder reads the clean structure at step 0, once per crystal."""

    encodings = 1

    def view(self, batch, t: torch.Tensor | None, property_steps: int, generator: torch.Generator | None = None):
        """``(frac_coords, lattice, step)`` the encoder reads for property steps ``t`` ``[B]`` (ignored here)."""
        step = torch.zeros(batch.num_atoms.shape[0], dtype=torch.long, device=batch.frac_coords.device)
        return batch.frac_coords, batch.lattice, step

    def blocks(self, property_steps: int) -> list[tuple[int, int]]:
        return [(1, property_steps)]

    def to(self, device) -> FixedStructure:
        return self


class NoisedStructures(FixedStructure):
    """Ablation "without fixing structures": the encoder reads the structure noised to the structure
    step matching the property step (see the module docstring); ``encodings`` blocks at inference."""

    def __init__(self, diffusion, encodings: int = 20):
        self.diffusion = diffusion  # a JointDiffusion: its tables, no weights of the model
        self.encodings = encodings

    def view(self, batch, t, property_steps, generator=None):
        step = structure_timestep(t, property_steps, self.diffusion.timesteps)
        frac, lattice = noise_structure(batch, self.diffusion, step, generator)
        return frac, lattice, step

    def blocks(self, property_steps: int) -> list[tuple[int, int]]:
        return structure_blocks(property_steps, self.encodings)

    def to(self, device) -> NoisedStructures:
        self.diffusion = self.diffusion.to(device)
        return self


class PropertyModel(nn.Module):
    """Encoder + property head, with the target's standardisation, lower bound and interval scale as buffers.

    Args:
        encoder: a module ``(batch, frac_coords, lattice, t) -> [N, H]`` (the pre-trained
            :class:`crysdiff.denoiser.CrysDiffEncoder`, or an :class:`AveragedEncoder`).
        hidden_dim: ``H``.
        head: the head config; ``mean``/``std``: the training target statistics.
        lower_bound: if set, predicted samples are clipped from below at this value (original units)
            before the mean, spread and interval are taken: ``0`` for targets whose training values
            are all non-negative (band gaps, moduli), so no prediction or interval is unphysical.
        interval_scale: the spread's split-conformal calibration on held-out crystals (fitted after
            fine-tuning, :meth:`calibrate`): predictions move each sample this many times further
            from the crystal's mean.
        structures: how the encoder reads the structure: :class:`FixedStructure` (default) or
            :class:`NoisedStructures` (ablation; needs a noise head with ``prior="mean"``).
        exact_mean: predict an affine head's exact chain mean instead of the samples' mean (see the
            module docstring; other heads keep the samples' mean).
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int, head: HeadConfig, mean: float = 0.0, std: float = 1.0,
                 lower_bound: float | None = None, interval_scale: float = 1.0,
                 structures: FixedStructure | None = None, exact_mean: bool = False):
        super().__init__()
        self.encoder = encoder
        self.exact_mean = exact_mean
        self.head_config = head
        self.head = build_head(hidden_dim, head)
        learned = head.prior == "learned"  # HeadConfig allows it for noise heads only
        self.prior = ValueMLP(hidden_dim, head.hidden_dim, head.dropout) if learned else None
        self.structures = structures or FixedStructure()
        if isinstance(self.structures, NoisedStructures) and (not self.is_diffusion or learned):
            raise ValueError(f"fix_structure=false needs a diffusion head with prior=mean (head.kind card, gaussian "
                             f"or eq4); found head.kind={head.kind}, head.prior={head.prior}")
        self.register_buffer("y_mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("y_std", torch.tensor(float(std), dtype=torch.float64))
        bound = -math.inf if lower_bound is None else float(lower_bound)  # -inf: no bound
        self.register_buffer("y_lower_bound", torch.tensor(bound, dtype=torch.float64))
        self.register_buffer("y_interval_scale", torch.tensor(float(interval_scale), dtype=torch.float64))

    @property
    def is_diffusion(self) -> bool:
        return isinstance(self.head, NoiseHead)

    @property
    def lower_bound(self) -> float | None:
        bound = float(self.y_lower_bound)
        return None if bound == -math.inf else bound

    @property
    def interval_scale(self) -> float:
        return float(self.y_interval_scale)

    def calibrate(self, interval_scale: float = 1.0, lower_bound: float | None = None) -> None:
        """Set the interval scale and the lower bound (both kept in the model's state)."""
        self.y_interval_scale.fill_(float(interval_scale))
        self.y_lower_bound.fill_(-math.inf if lower_bound is None else float(lower_bound))

    def _apply(self, fn, *args, **kwargs):  # .to(device) also moves the structure noising's tables
        super()._apply(fn, *args, **kwargs)
        self.structures = self.structures.to(self.y_mean.device)
        return self

    def encode(self, batch, t: torch.Tensor | None = None, property_steps: int = 1,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``crystal_features`` ``[B, H]`` of the structure as :attr:`structures` presents it at property steps ``t``."""
        frac, lattice, step = self.structures.view(batch, t, property_steps, generator)
        return pool_mean(self.encoder(batch, frac, lattice, step), batch.batch, batch.num_atoms.shape[0])

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean.to(y.dtype)) / self.y_std.to(y.dtype)

    def destandardise(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_std.to(y.dtype) + self.y_mean.to(y.dtype)

    def prior_mean(self, features: torch.Tensor) -> torch.Tensor:
        """``μ`` ``[B]`` in standardised units: 0 (the training mean) or the learned ``f(x)``."""
        if self.prior is None:
            return torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        return self.prior(features)

    def loss(self, batch, y: torch.Tensor, diffusion: PropertyDiffusion, generator: torch.Generator | None = None) -> dict:
        """Alg. 2 for targets ``y`` ``[B]`` (original units). Returns ``loss`` and its parts."""
        t = None  # the step comes first: with NoisedStructures the encoder sees the structure at that step
        if self.is_diffusion:
            t = diffusion.sample_timesteps(y.shape[0], device=batch.frac_coords.device, generator=generator)
        features = self.encode(batch, t, diffusion.timesteps, generator)
        y0 = self.standardise(y).to(features.dtype)
        if not self.is_diffusion:
            loss = (self.head(features, None, None, None, diffusion.alpha_bar) - y0).abs().mean()
            return {"loss": loss, "loss_regression": loss.detach()}
        out, loss = {}, 0.0
        mu = self.prior_mean(features)
        if self.prior is not None:
            prior_loss = (mu - y0).abs().mean()
            out["loss_prior"] = prior_loss.detach()
            loss = loss + prior_loss
            mu = mu.detach()  # the noise head conditions on f(x); f(x) learns from its own L1 loss
        noise_loss = diffusion.loss(self.head, features, y0, mu, t, generator)
        out["loss_noise"] = noise_loss.detach()
        out["loss"] = loss + noise_loss
        return out

    def encodings(self, batch, diffusion: PropertyDiffusion,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodings ``[K, B, H]`` and, per property step ``0..T``, the index of the one it uses ``[T+1]``."""
        steps = diffusion.timesteps
        num_crystals = batch.num_atoms.shape[0]
        encodings, block_of = [], torch.zeros(steps + 1, dtype=torch.long)
        for k, (first, last) in enumerate(self.structures.blocks(steps)):
            middle = torch.full((num_crystals,), (first + last) // 2, dtype=torch.long, device=batch.frac_coords.device)
            encodings.append(self.encode(batch, middle, steps, generator))
            block_of[first:last + 1] = k
        return torch.stack(encodings), block_of

    @torch.no_grad()
    def predict(self, batch, diffusion: PropertyDiffusion, num_samples: int = 100, generator: torch.Generator | None = None,
                keep_samples: bool = False, interval_scale: float | None = None) -> dict[str, torch.Tensor]:
        """Predictions in original units: ``mean``, ``std``, ``p2.5``, ``p97.5`` ``[B]`` (and ``samples`` ``[B, S]``).

        ``interval_scale`` (default: the model's own) widens or narrows the samples about each
        crystal's mean; the mean is that of the chain's samples either way, or with
        :attr:`exact_mean` and an affine head the chain's exact mean."""
        encodings, block_of = self.encodings(batch, diffusion, generator)
        features = encodings[0]  # [B, H]; the only one when the structure is fixed
        if not self.is_diffusion:
            mean = self.destandardise(self.head(features, None, None, None, diffusion.alpha_bar).double())
            if self.lower_bound is not None:
                mean = mean.clamp_min(self.lower_bound)
            nan = torch.full_like(mean, float("nan"))
            return {"mean": mean, "std": nan, "p2.5": nan, "p97.5": nan}
        mu = self.prior_mean(features).double()
        exact = None
        if self.exact_mean and isinstance(self.head, AffineNoiseHead):
            samples, mean, var = sample_affine_moments(self.head, encodings, block_of, mu, diffusion, num_samples,
                                                       generator)
            exact = clipped_gaussian_mean(self.destandardise(mean), var.sqrt() * self.y_std, self.lower_bound)
        else:
            samples = sampler_for(self.head)(self.head, encodings, block_of, mu, diffusion, num_samples, generator)
        scale = self.interval_scale if interval_scale is None else interval_scale
        out = sample_summary(self.destandardise(samples), scale, self.lower_bound, exact)  # [B, S] in original units
        if not keep_samples:
            del out["samples"]
        return out
