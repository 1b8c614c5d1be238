"""Fine-tuning (paper Alg. 2) and prediction with uncertainty (Alg. 3).

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from crysdiff.card import PropertyDiffusion, PropertyDiffusionConfig
from crysdiff.config import DataConfig, TrainConfig
from crysdiff.heads import HeadConfig, RegressionHead, build_noise_head

__all__ = ["FinetuneConfig", "PropertyModel", "pool_mean"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings.

    Attributes:
        target: the label column to learn (e.g. ``formation_energy_per_atom``).
        head: the property head (``kind="card"`` default; ``"eq4"``, ``"card_mlp"``, ``"regression"``).
        property: the CARD schedule on the target.
        freeze_encoder: keep the pre-trained encoder fixed (ablation "without updating the encoder").
        encoder_lr_ratio: the encoder's learning rate relative to the head's.
        eval_samples: samples per crystal when validating (prediction uses ``--samples``).
    """

    target: str = ""
    head: HeadConfig = field(default_factory=HeadConfig)
    property: PropertyDiffusionConfig = field(default_factory=PropertyDiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, max_epochs=30, warmup_steps=100))
    data: DataConfig = field(default_factory=DataConfig)
    freeze_encoder: bool = False
    encoder_lr_ratio: float = 1.0
    eval_samples: int = 20


def pool_mean(node_features: torch.Tensor, batch_index: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """``[B, H]`` mean of ``[N, H]`` atom states per crystal."""
    out = torch.zeros(num_crystals, node_features.shape[1], dtype=node_features.dtype, device=node_features.device)
    out.index_add_(0, batch_index, node_features)
    counts = torch.bincount(batch_index, minlength=num_crystals).clamp(min=1).to(node_features.dtype)
    return out / counts[:, None]


class PropertyModel(nn.Module):
    """Encoder + property head, with the target's standardisation as buffers.

    Args:
        encoder: a module ``(batch, frac_coords, lattice, t) -> [N, H]`` (the pre-trained
            :class:`crysdiff.denoiser.CrysDiffEncoder`).
        hidden_dim: ``H``.
        head: the head config; ``mean``/``std``: the training target statistics.
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int, head: HeadConfig, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.head_config = head
        if head.kind == "regression":
            self.head = RegressionHead(hidden_dim, head.hidden_dim, head.dropout)
        else:
            self.head = build_noise_head(hidden_dim, head)
        self.prior = RegressionHead(hidden_dim, head.hidden_dim, head.dropout) if head.prior == "learned" else None
        self.register_buffer("y_mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("y_std", torch.tensor(float(std), dtype=torch.float64))

    @property
    def is_diffusion(self) -> bool:
        return self.head_config.kind != "regression"

    def encode(self, batch) -> torch.Tensor:
        """``crystal_features`` ``[B, H]`` of the clean structures (time step 0)."""
        num_crystals = batch.num_atoms.shape[0]
        t = torch.zeros(num_crystals, dtype=torch.long, device=batch.frac_coords.device)
        nodes = self.encoder(batch, batch.frac_coords, batch.lattice, t)  # [N, H]
        return pool_mean(nodes, batch.batch, num_crystals)

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
        features = self.encode(batch)
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
        t = diffusion.sample_timesteps(y0.shape[0], device=y0.device, generator=generator)
        noise = torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
        y_t = diffusion.add_noise(y0, mu, t, noise)
        eps_hat = self.head(features, y_t, mu, t)
        noise_loss = ((eps_hat - noise) ** 2).mean()
        out["loss_noise"] = noise_loss.detach()
        out["loss"] = loss + noise_loss
        return out

    @torch.no_grad()
    def predict(self, batch, diffusion: PropertyDiffusion, num_samples: int = 100, generator: torch.Generator | None = None,
                keep_samples: bool = False) -> dict[str, torch.Tensor]:
        """Predictions in original units: ``mean``, ``std``, ``p2.5``, ``p97.5`` ``[B]`` (and ``samples`` ``[B, S]``)."""
        features = self.encode(batch)  # the structure is fixed: encode once
        if not self.is_diffusion:
            mean = self.destandardise(self.head(features).double())
            nan = torch.full_like(mean, float("nan"))
            return {"mean": mean, "std": nan, "p2.5": nan, "p97.5": nan}
        mu = self.prior_mean(features).double()
        if hasattr(self.head, "chain_coefficients"):
            coeffs = self.head.chain_coefficients(features, diffusion.timesteps).double()  # [B, T+1, 3]
            samples = diffusion.sample_affine(coeffs, mu, num_samples, generator=generator)
        else:
            def eps_model(y_t, t):  # [B, S] -> [B, S]: the head on every sample, structure fixed
                batch_size, samples_per = y_t.shape
                z = features[:, None, :].expand(-1, samples_per, -1).reshape(batch_size * samples_per, -1)
                t_vec = torch.full((batch_size * samples_per,), t, dtype=torch.long, device=y_t.device)
                mu_flat = mu[:, None].expand(-1, samples_per).reshape(-1).to(z.dtype)
                return self.head(z, y_t.reshape(-1).to(z.dtype), mu_flat, t_vec).reshape(batch_size, samples_per).double()

            samples = diffusion.sample(eps_model, mu, num_samples, generator=generator)
        samples = self.destandardise(samples)  # [B, S]
        out = {
            "mean": samples.mean(dim=1),
            "std": samples.std(dim=1) if num_samples > 1 else torch.zeros(samples.shape[0], dtype=samples.dtype),
            "p2.5": torch.quantile(samples, 0.025, dim=1),
            "p97.5": torch.quantile(samples, 0.975, dim=1),
        }
        if keep_samples:
            out["samples"] = samples
        return out
