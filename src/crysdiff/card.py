"""The CARD-style diffusion process on a scalar property ``y`` (paper Alg. 2 and 3, Eq. 6).

Forward process, with ``mu`` the prior mean (the training mean ``ȳ`` in the paper, or a learned
``f(x)`` as in CARD)::

    q(y_t | y_0, mu) = N( sqrt(alpha_bar_t) y_0 + (1 - sqrt(alpha_bar_t)) mu,  1 - alpha_bar_t )

so ``y_T`` ends at ``N(mu, 1)``. Writing ``z = y - mu`` turns this into an ordinary DDPM on ``z``,
which is how every coefficient below is derived (and tested against a direct Gaussian computation).

Posterior (Eq. 6)::

    q(y_{t-1} | y_t, y_0, mu) = N( gamma_0 y_0 + gamma_1 y_t + gamma_2 mu,  beta_tilde_t )

    gamma_0 = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)
    gamma_1 = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)
    gamma_2 = 1 + (sqrt(alpha_bar_t) - 1)(sqrt(alpha_t) + sqrt(alpha_bar_{t-1})) / (1 - alpha_bar_t)
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t

Reading of the garbled parts of the paper (documented in docs/method.md): Eq. 6 prints the
variance as ``beta_t`` but then defines ``beta_tilde_t``; the posterior variance of this Gaussian
chain is ``beta_tilde_t``, which we use. Alg. 3 line 5 prints ``1/(2 pi)`` where the DDPM inversion
needs ``1/sqrt(alpha_bar_t)``::

    y0_hat = ( y_t - (1 - sqrt(alpha_bar_t)) mu - sqrt(1 - alpha_bar_t) eps_hat ) / sqrt(alpha_bar_t)

Alg. 2's loss is :meth:`PropertyDiffusion.loss` (as :meth:`crysdiff.diffusion.JointDiffusion.loss`
holds Alg. 1's); Alg. 3's samplers, which call a head, are :mod:`crysdiff.property_sampling`.
This module holds no learnable parameters; the network that predicts ``eps_hat`` lives elsewhere.
Time steps are integers ``t`` in ``1..T``; index 0 of every table is the clean end (``alpha_bar_0 = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PropertyDiffusionConfig", "PropertyDiffusion", "StepTables", "beta_schedule"]


def beta_schedule(kind: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``[T]`` float64 betas for steps ``1..T``: ``"linear"`` (DDPM/CARD) or ``"cosine"`` (Nichol & Dhariwal)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}: expected 'linear' or 'cosine'")


@dataclass(frozen=True)
class PropertyDiffusionConfig:
    """Schedule of the property diffusion. CARD uses a linear schedule with T = 1000."""

    timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02


class StepTables:
    """What both diffusion processes (this one and :class:`crysdiff.diffusion.JointDiffusion`) share:
    ``T`` from ``self.config``, schedule tables indexed by step, and uniform training steps."""

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[t]`` on ``like``'s device and in its dtype."""
        return table.to(like.device)[t].to(like.dtype)

    def sample_timesteps(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n]`` long, uniform on ``1..T``."""
        return torch.randint(1, self.timesteps + 1, (n,), device=device, generator=generator)


class PropertyDiffusion(StepTables):
    """Forward noising, posterior and reverse sampling for the CARD process (no parameters)."""

    def __init__(self, config: PropertyDiffusionConfig = PropertyDiffusionConfig()):
        self.config = config
        beta = beta_schedule(config.beta_schedule, config.timesteps, config.beta_start, config.beta_end)
        self.beta = torch.cat([torch.zeros(1, dtype=torch.float64), beta])  # [T+1], beta[0] unused
        self.alpha = 1 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, 0)  # [T+1], alpha_bar[0] = 1
        ab, ab_prev = self.alpha_bar[1:], self.alpha_bar[:-1]
        one = torch.ones(1, dtype=torch.float64)
        # posterior tables for t = 1..T (index 0 padded so that table[t] is step t)
        self.gamma_0 = torch.cat([one * 0, self.beta[1:] * ab_prev.sqrt() / (1 - ab)])
        self.gamma_1 = torch.cat([one * 0, (1 - ab_prev) * self.alpha[1:].sqrt() / (1 - ab)])
        self.gamma_2 = torch.cat([one * 0, 1 + (ab.sqrt() - 1) * (self.alpha[1:].sqrt() + ab_prev.sqrt()) / (1 - ab)])
        self.beta_tilde = torch.cat([one * 0, (1 - ab_prev) / (1 - ab) * self.beta[1:]])

    def add_noise(self, y0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``y_t`` from ``y_0`` (Alg. 2 line 2). All tensors ``[B]`` (``t`` long in 1..T)."""
        ab = self._at(self.alpha_bar, t, y0)
        return ab.sqrt() * y0 + (1 - ab.sqrt()) * mu + (1 - ab).sqrt() * noise

    def loss(self, head, features: torch.Tensor, y0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Alg. 2: ``|ε − ε̂(z, y_t, μ, t)|²`` averaged over the batch, for standardised targets ``y0``,
        prior means ``mu`` and steps ``t`` ``[B]``; ``head(features, y_t, mu, t, alpha_bar)`` predicts ``ε``."""
        noise = torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
        y_t = self.add_noise(y0, mu, t, noise)
        return ((head(features, y_t, mu, t, self.alpha_bar) - noise) ** 2).mean()

    def predict_y0(self, y_t: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
        """Invert the forward process for ``y_0`` given a noise estimate (Alg. 3 line 5, corrected)."""
        ab = self._at(self.alpha_bar, t, y_t)
        return (y_t - (1 - ab.sqrt()) * mu - (1 - ab).sqrt() * eps_hat) / ab.sqrt()

    def posterior(self, y0: torch.Tensor, y_t: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(y_{t-1} | y_t, y_0, mu)`` (Eq. 6)."""
        mean = (
            self._at(self.gamma_0, t, y_t) * y0 + self._at(self.gamma_1, t, y_t) * y_t + self._at(self.gamma_2, t, y_t) * mu
        )
        return mean, self._at(self.beta_tilde, t, y_t)

    @torch.no_grad()
    def sample(self, eps_model, mu: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling (Alg. 3): ``[B, S]`` samples of ``y_0``.

        Args:
            eps_model: callable ``(y_t [B, S], t int) -> eps_hat [B, S]``; the structure is fixed, so the
                caller closes over the (once-computed) structure representation.
            mu: ``[B]`` prior means.
        """
        shape = (mu.shape[0], num_samples)
        mu = mu[:, None].expand(shape)
        y = mu + torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        for t in range(self.timesteps, 0, -1):
            t_vec = torch.full(shape, t, dtype=torch.long, device=mu.device)
            y0_hat = self.predict_y0(y, mu, t_vec, eps_model(y, t))
            if t == 1:
                return y0_hat
            mean, var = self.posterior(y0_hat, y, mu, t_vec)
            y = mean + var.sqrt() * torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return y

    def _affine_step_tables(self, coeffs: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a noise head affine in ``y_t`` (``eps_hat = a + b y_t + c mu``, ``coeffs`` ``[B, T+1, 3]``),
        each reverse step is ``y_{t-1} = A_t y_t + C_t + s_t noise``; returns ``A, C, s`` ``[B, T+1]``."""
        dtype, device = coeffs.dtype, coeffs.device
        ab = self.alpha_bar.to(device, dtype)[None, :]  # [1, T+1]
        a, b, c = coeffs.unbind(-1)  # [B, T+1]
        mu = mu[:, None]
        ab = ab.clone()
        ab[:, 0] = 1.0  # row 0 is unused; avoid 0/0
        root, root_1m = ab.sqrt(), (1 - ab).sqrt()
        # y0_hat = P y_t + Q
        P = (1 - root_1m * b) / root
        Q = (-(1 - root) * mu - root_1m * (a + c * mu)) / root
        g0, g1, g2 = (x.to(device, dtype)[None, :] for x in (self.gamma_0, self.gamma_1, self.gamma_2))
        A = g0 * P + g1
        C = g0 * Q + g2 * mu
        s = self.beta_tilde.to(device, dtype)[None, :].sqrt().expand_as(A).clone()
        # the last step (t = 1) returns y0_hat itself
        A[:, 1], C[:, 1], s[:, 1] = P[:, 1], Q[:, 1], 0.0
        return A, C, s

    @torch.no_grad()
    def sample_affine(self, coeffs: torch.Tensor, mu: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Alg. 3 for a head affine in ``y_t``: the same ancestral chain as :meth:`sample`, with the
        head's coefficients precomputed per crystal and step (``coeffs`` ``[B, T+1, 3]``), so the
        ``S`` samples cost a few multiply-adds per step. Returns ``[B, S]``."""
        A, C, s = self._affine_step_tables(coeffs, mu)
        shape = (mu.shape[0], num_samples)
        y = mu[:, None] + torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        for t in range(self.timesteps, 0, -1):
            y = A[:, t, None] * y + C[:, t, None]
            if t > 1:
                y = y + s[:, t, None] * torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return y

    @torch.no_grad()
    def affine_moments(self, coeffs: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and variance ``[B]`` of the chain's output for a head affine in ``y_t``: the
        chain is linear-Gaussian, so its end point is Gaussian (the limit of infinitely many samples).

        Unrolling ``y_{t-1} = A_t y_t + C_t + s_t noise`` from ``y_T ~ N(mu, 1)`` gives
        ``m = G_T mu + sum_t G_{t-1} C_t`` and ``v = G_T² + sum_t G_{t-1}² s_t²`` with
        ``G_k = A_1 ... A_k`` (``G_0 = 1``): one cumulative product instead of ``T`` steps."""
        A, C, s = self._affine_step_tables(coeffs, mu)
        gain = torch.cumprod(A[:, 1:], dim=1)  # [B, T]: G_1 .. G_T
        before = torch.cat([torch.ones_like(gain[:, :1]), gain[:, :-1]], dim=1)  # [B, T]: G_0 .. G_{T-1}
        mean = gain[:, -1] * mu + (before * C[:, 1:]).sum(1)
        var = gain[:, -1] ** 2 + (before ** 2 * s[:, 1:] ** 2).sum(1)
        return mean, var

    @torch.no_grad()
    def sample_affine_endpoint(self, coeffs: torch.Tensor, mu: torch.Tensor, num_samples: int,
                               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples ``[B, S]`` of the affine chain's end point drawn from its exact law ``N(m, v)``
        (:meth:`affine_moments`), with ``m`` and ``v`` ``[B]``: the same distribution as
        :meth:`sample_affine`'s samples (the chain is linear-Gaussian), at the cost of one draw per
        sample instead of ``T`` steps. The draws themselves differ from the chain's."""
        mean, var = self.affine_moments(coeffs, mu)
        noise = torch.randn((mu.shape[0], num_samples), generator=generator, dtype=mu.dtype, device=mu.device)
        return mean[:, None] + var.sqrt()[:, None] * noise, mean, var
