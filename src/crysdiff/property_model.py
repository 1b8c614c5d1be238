"""The fine-tuned network: an encoder, a property head and the target's standardisation.

A :class:`PropertyModel` is the pre-trained encoder plus a property head (composition, not a copied
class): the encoder reads the clean structure once, its atom states are mean-pooled into
``crystal_features`` ``[B, H]``, and the head runs the CARD chain on the standardised target.

* Training (Alg. 2): ``y_0`` standardised with the training mean and std (stored in the
  checkpoint), ``t ~ U{1..T}``, ``y_t = √ᾱ_t y_0 + (1 − √ᾱ_t) μ + √(1 − ᾱ_t) ε`` and the loss is
  ``|ε − ε̂(z, y_t, μ, t)|²``. The prior mean ``μ`` is the training mean (``0`` in standardised
  units, the paper) or CARD's learned prior ``f(x)`` (a regression head trained with L1 alongside).
* Inference (Alg. 3): the encoder runs once per crystal; the ``T``-step chain runs for all ``S``
  samples through the head only (for affine heads the head runs once per crystal and step, see
  :meth:`crysdiff.card.PropertyDiffusion.sample_affine`). The mean of the samples is the
  prediction; their standard deviation and 2.5/97.5 percentiles are the uncertainty.
* ``head.kind = "regression"``: the plain L1 regression baseline on the same encoder.

Two ablations of paper Fig. 5 live here as options of the same model:

* **Without joint diffusion**: the encoder is an :class:`AveragedEncoder` of two separately
  pre-trained encoders (one lattice-only, one coordinates-only); its atom states are their mean.
* **Without fixing structures**: given a structure diffusion (the pre-training
  :class:`~crysdiff.diffusion.JointDiffusion`), the structure is diffused together with ``y``.
  In training, the property step ``t`` is mapped to the structure step ``s`` of the same relative
  position (:func:`structure_timestep`), ``(F, L)`` is noised to ``s`` and the encoder sees
  ``(F_s, L_s, s)``; the loss stays the ``ε_y`` loss alone (the structure-denoising heads of
  pre-training are not part of this model). At inference the chain's ``T`` steps are cut into
  ``structure_encodings`` blocks; each block gets one encoding of the structure noised (from the
  clean input, ``q(F_s, L_s | F_0, L_0)``) to the step of the block's middle, shared by the ``S``
  samples. That is ``structure_encodings`` encoder passes per crystal instead of one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from crysdiff.card import PropertyDiffusion
from crysdiff.heads import HeadConfig, RegressionHead, build_noise_head
from crysdiff.layers import pool_mean

__all__ = ["PropertyModel", "AveragedEncoder", "pool_mean", "summarise", "structure_timestep", "structure_blocks", "noise_structure"]


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


class PropertyModel(nn.Module):
    """Encoder + property head, with the target's standardisation as buffers.

    Args:
        encoder: a module ``(batch, frac_coords, lattice, t) -> [N, H]`` (the pre-trained
            :class:`crysdiff.denoiser.CrysDiffEncoder`, or an :class:`AveragedEncoder`).
        hidden_dim: ``H``.
        head: the head config; ``mean``/``std``: the training target statistics.
        lower_bound: if set, predicted samples are clipped from below at this value (original units)
            before the mean, spread and interval are taken: ``0`` for targets whose training values
            are all non-negative (band gaps, moduli), so no prediction or interval is unphysical.

    ``loss`` and ``predict`` take an optional ``structure_diffusion`` (a ``JointDiffusion``): when
    given, the structure is not fixed but diffused with ``y`` (see the module docstring).
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int, head: HeadConfig, mean: float = 0.0, std: float = 1.0,
                 lower_bound: float | None = None, max_atomic_number: int = 118):
        super().__init__()
        self.lower_bound = lower_bound
        # the spread's calibration on held-out crystals (split-conformal, set after fine-tuning, stored in the
        # checkpoint's normaliser): predict() moves each sample this many times further from the crystal's mean
        self.interval_scale = 1.0
        self.encoder = encoder
        self.head_config = head
        if head.layers not in ("last", "all"):
            raise ValueError(f"unknown head.layers {head.layers!r}: expected 'last' or 'all'")
        self.all_layers = head.layers == "all"
        feature_dim = hidden_dim
        if self.all_layers:
            if not hasattr(encoder, "layers"):
                raise ValueError(f"head.layers=all needs the equivariant encoder (model.kind=equivariant) on its own; "
                                 f"found {type(encoder).__name__}")
            feature_dim = hidden_dim * (len(encoder.layers) + 1)
            self.layer_norm = nn.LayerNorm(feature_dim)
        if head.kind == "regression":
            self.head = RegressionHead(feature_dim, head.hidden_dim, head.dropout)
        else:
            self.head = build_noise_head(feature_dim, head)
        learned = head.prior == "learned" and head.kind != "regression"  # a regression head needs no prior
        self.prior = RegressionHead(feature_dim, head.hidden_dim, head.dropout) if learned else None
        # head.composition: an element embedding of the head's own, indexed by Z (row 0 unused)
        self.composition = nn.Embedding(max_atomic_number + 1, hidden_dim) if head.composition else None
        self.register_buffer("y_mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("y_std", torch.tensor(float(std), dtype=torch.float64))

    @property
    def is_diffusion(self) -> bool:
        return self.head_config.kind != "regression"

    def check_unfixed_structures(self) -> None:
        """Diffusing the structure with ``y`` needs a diffusion head whose prior needs no structure."""
        if not self.is_diffusion or self.prior is not None:
            raise ValueError(f"fix_structure=false needs a diffusion head with prior=mean (head.kind card, gaussian, card_mlp or eq4); "
                             f"found head.kind={self.head_config.kind}, head.prior={self.head_config.prior}")

    def encode(self, batch, structure_diffusion=None, t: torch.Tensor | None = None,
               generator: torch.Generator | None = None, property_steps: int | None = None) -> torch.Tensor:
        """``crystal_features`` ``[B, H]``: of the clean structure at time step 0, or, given a
        ``structure_diffusion``, property steps ``t`` ``[B]`` (in ``1..property_steps``), of the
        structure noised to the matching structure step."""
        num_crystals = batch.num_atoms.shape[0]
        if structure_diffusion is None:
            step = torch.zeros(num_crystals, dtype=torch.long, device=batch.frac_coords.device)
            frac, lattice = batch.frac_coords, batch.lattice
        else:
            step = structure_timestep(t, property_steps, structure_diffusion.timesteps)
            frac, lattice = noise_structure(batch, structure_diffusion, step, generator)
        if self.all_layers:  # head.layers=all: [B, (L + 1) H], every layer's pooled states side by side
            *states, nodes = self.encoder(batch, frac, lattice, step, all_layers=True)
        else:
            states, nodes = [], self.encoder(batch, frac, lattice, step)  # [N, H]
        if self.composition is not None:
            nodes = nodes + self.composition(batch.atomic_numbers).to(nodes.dtype)
        if not states:
            return pool_mean(nodes, batch.batch, num_crystals)
        return self.layer_norm(torch.cat([pool_mean(h, batch.batch, num_crystals) for h in (*states, nodes)], dim=-1))

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean.to(y.dtype)) / self.y_std.to(y.dtype)

    def destandardise(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_std.to(y.dtype) + self.y_mean.to(y.dtype)

    def _schedule(self, diffusion: PropertyDiffusion) -> dict:
        """The extra argument of heads that compute their coefficients from the schedule (``uses_schedule``)."""
        return {"alpha_bar": diffusion.alpha_bar} if getattr(self.head, "uses_schedule", False) else {}

    def prior_mean(self, features: torch.Tensor) -> torch.Tensor:
        """``μ`` ``[B]`` in standardised units: 0 (the training mean) or the learned ``f(x)``."""
        if self.prior is None:
            return torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        return self.prior(features)

    def loss(self, batch, y: torch.Tensor, diffusion: PropertyDiffusion, generator: torch.Generator | None = None,
             structure_diffusion=None) -> dict:
        """Alg. 2 for targets ``y`` ``[B]`` (original units). Returns ``loss`` and its parts."""
        t = None
        if structure_diffusion is not None:  # the step comes first: the encoder sees the structure at that step
            self.check_unfixed_structures()
            t = diffusion.sample_timesteps(y.shape[0], device=batch.frac_coords.device, generator=generator)
        features = self.encode(batch, structure_diffusion, t, generator, diffusion.timesteps)
        y0 = self.standardise(y).to(features.dtype)
        if not self.is_diffusion:
            loss = (self.head(features) - y0).abs().mean()
            return {"loss": loss, "loss_regression": loss.detach()}
        out = {}
        mu = self.prior_mean(features)
        loss = 0.0
        if self.prior is not None:
            prior_loss = (mu - y0).abs().mean()
            out["loss_prior"] = prior_loss.detach()
            loss = loss + prior_loss
            mu = mu.detach()  # the noise head conditions on f(x); f(x) learns from its own L1 loss
        if t is None:
            t = diffusion.sample_timesteps(y0.shape[0], device=y0.device, generator=generator)
        noise = torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
        y_t = diffusion.add_noise(y0, mu, t, noise)
        eps_hat = self.head(features, y_t, mu, t, **self._schedule(diffusion))
        noise_loss = ((eps_hat - noise) ** 2).mean()
        out["loss_noise"] = noise_loss.detach()
        out["loss"] = loss + noise_loss
        return out

    def _step_features(self, batch, diffusion: PropertyDiffusion, structure_diffusion, structure_encodings: int,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodings ``[K, B, H]`` and, per property step ``0..T``, the index of the one it uses ``[T+1]``."""
        steps = diffusion.timesteps
        if structure_diffusion is None:  # the structure is fixed: encode once
            return self.encode(batch)[None], torch.zeros(steps + 1, dtype=torch.long)
        self.check_unfixed_structures()
        num_crystals = batch.num_atoms.shape[0]
        encodings, block_of = [], torch.zeros(steps + 1, dtype=torch.long)
        for k, (first, last) in enumerate(structure_blocks(steps, structure_encodings)):
            middle = torch.full((num_crystals,), (first + last) // 2, dtype=torch.long, device=batch.frac_coords.device)
            encodings.append(self.encode(batch, structure_diffusion, middle, generator, steps))
            block_of[first:last + 1] = k
        return torch.stack(encodings), block_of

    @torch.no_grad()
    def predict(self, batch, diffusion: PropertyDiffusion, num_samples: int = 100, generator: torch.Generator | None = None,
                keep_samples: bool = False, structure_diffusion=None, structure_encodings: int = 20,
                interval_scale: float | None = None) -> dict[str, torch.Tensor]:
        """Predictions in original units: ``mean``, ``std``, ``p2.5``, ``p97.5`` ``[B]`` (and ``samples`` ``[B, S]``).

        With a ``structure_diffusion`` the chain sees the structure noised to each step, with
        ``structure_encodings`` encoder passes per crystal (see the module docstring).
        ``interval_scale`` (default: the model's own, :func:`scale_spread`) widens or narrows the
        samples about each crystal's mean; the mean is that of the chain's samples either way."""
        encodings, block_of = self._step_features(batch, diffusion, structure_diffusion, structure_encodings, generator)
        features = encodings[0]  # [B, H]; the only one when the structure is fixed
        if not self.is_diffusion:
            mean = self.destandardise(self.head(features).double())
            if self.lower_bound is not None:
                mean = mean.clamp_min(self.lower_bound)
            nan = torch.full_like(mean, float("nan"))
            return {"mean": mean, "std": nan, "p2.5": nan, "p97.5": nan}
        mu = self.prior_mean(features).double()
        if hasattr(self.head, "chain_coefficients"):
            per_encoding = [self.head.chain_coefficients(z, diffusion.timesteps, **self._schedule(diffusion))
                            for z in encodings]  # each [B, T+1, 3]
            index = block_of.to(features.device)[None, :, None].expand_as(per_encoding[0])
            coeffs = torch.stack(per_encoding).gather(0, index[None]).squeeze(0).double()  # [B, T+1, 3]
            samples = diffusion.sample_affine(coeffs, mu, num_samples, generator=generator)
        else:
            def eps_model(y_t, t):  # [B, S] -> [B, S]: the head on every sample
                batch_size, samples_per = y_t.shape
                z = encodings[int(block_of[t])]
                z = z[:, None, :].expand(-1, samples_per, -1).reshape(batch_size * samples_per, -1)
                t_vec = torch.full((batch_size * samples_per,), t, dtype=torch.long, device=y_t.device)
                mu_flat = mu[:, None].expand(-1, samples_per).reshape(-1).to(z.dtype)
                eps = self.head(z, y_t.reshape(-1).to(z.dtype), mu_flat, t_vec, **self._schedule(diffusion))
                return eps.reshape(batch_size, samples_per).double()

            samples = diffusion.sample(eps_model, mu, num_samples, generator=generator)
        samples = self.destandardise(samples)  # [B, S]
        if self.lower_bound is not None:
            samples = samples.clamp_min(self.lower_bound)
        scale = self.interval_scale if interval_scale is None else interval_scale
        if scale != 1.0:
            mean = samples.mean(dim=1)
            out = summarise(scale_spread(samples, mean, scale, self.lower_bound))
            out["mean"] = mean
        else:
            out = summarise(samples)
        if not keep_samples:
            del out["samples"]
        return out


def scale_spread(samples: torch.Tensor, mean: torch.Tensor, scale: float, lower_bound: float | None = None) -> torch.Tensor:
    """Samples ``[B, S]`` moved ``scale`` times further from their crystal's ``mean`` ``[B]``, clipped
    at ``lower_bound``. The map is increasing, so every quantile moves the same way:
    ``q' = clip(mean + scale (q − mean))``."""
    moved = mean[:, None] + scale * (samples - mean[:, None])
    return moved if lower_bound is None else moved.clamp_min(lower_bound)


def conformal_interval_scale(y, mean, low, high, level: float = 0.95) -> tuple[float, dict]:
    """The ``interval_scale`` that makes the central intervals ``[low, high]`` about ``mean`` (all
    ``[N]``, held-out crystals; ``low``/``high`` at the level the scale will be applied to) cover
    ``level`` of the targets ``y``: split-conformal calibration of one factor for the spread.

    Crystal ``i`` is covered once the scale reaches ``k_i = (y_i − mean_i)/(high_i − mean_i)`` above
    the mean, ``(mean_i − y_i)/(mean_i − low_i)`` below it (a target at a clipping bound counts as
    below, where clipping reaches it). The scale is the ``ceil((N + 1) level)``-th smallest ``k_i``
    (all of them when ``N`` is too small), which covers at least ``level`` of new crystals drawn
    like these. A crystal whose interval has no width on its side has ``k_i = inf``; if that pushes
    the quantile to ``inf``, the largest finite ``k_i`` is used instead. Returns the scale and a
    summary (``count``, ``coverage_before``, ``coverage_after``, ``uncoverable``).
    """
    import numpy as np

    y, mean, low, high = (np.asarray(a, dtype=np.float64) for a in (y, mean, low, high))
    with np.errstate(divide="ignore", invalid="ignore"):
        above = np.where(high > mean, (y - mean) / (high - mean), np.where(y > mean, np.inf, 0.0))
        below = np.where(low < mean, (mean - y) / (mean - low), np.where(y < mean, np.inf, 0.0))
    need = np.where(y >= mean, above, below)
    need = np.maximum(need, 0.0)
    n = len(need)
    if n == 0:
        return 1.0, {"count": 0}
    rank = min(n, int(np.ceil((n + 1) * level)))
    scale = float(np.sort(need)[rank - 1])
    finite = need[np.isfinite(need)]
    if not np.isfinite(scale):
        scale = float(finite.max()) if len(finite) else 1.0
    scale = max(scale, 1e-6)
    return scale, {"count": int(n), "coverage_before": float(np.mean(need <= 1.0)),
                   "coverage_after": float(np.mean(need <= scale)), "uncoverable": int(np.sum(~np.isfinite(need)))}


def summarise(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mean``, ``std``, ``p2.5``, ``p97.5`` ``[B]`` of samples ``[B, S]`` (kept as ``samples``)."""
    return {
        "mean": samples.mean(dim=1),
        "std": samples.std(dim=1) if samples.shape[1] > 1 else torch.zeros(samples.shape[0], dtype=samples.dtype,
                                                                             device=samples.device),
        "p2.5": torch.quantile(samples, 0.025, dim=1),
        "p97.5": torch.quantile(samples, 0.975, dim=1),
        "samples": samples,
    }
