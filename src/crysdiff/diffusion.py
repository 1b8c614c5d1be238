"""The joint structure diffusion of pre-training (paper Alg. 1, Eqs. 1 and 2).

Two corruption processes run side by side, one per field of the crystal ``(A, F, L)``:

* **Lattice** ``L`` — DDPM (Ho et al. 2020) with a cosine beta schedule::

      L_t = sqrt(alpha_bar_t) L_0 + sqrt(1 - alpha_bar_t) eps_L,      eps_L ~ N(0, I)

  The network predicts ``eps_L`` (Eq. 1).
* **Fractional coordinates** ``F`` — variance-exploding diffusion on the torus with the wrapped
  normal kernel (Jing et al. 2022; Jiao et al. 2023)::

      F_t = w(F_0 + sigma_t eps_F),   q(F_t | F_0) ∝ sum_{n in Z^3} exp(-|F_t - F_0 + n|² / (2 sigma_t²))

  with ``w(x) = x - floor(x)`` and the exponential schedule
  ``sigma_t = sigma_min (sigma_max / sigma_min)^((t - 1) / (T - 1))`` for ``t = 1..T``.

**Score parameterisation.** Eq. 2 weights the score error by
``lambda_t = 1 / E[|∇ log q(F_t | F_0)|²]`` (per coordinate, computed once by quadrature, see
:func:`score_norm_weights`). The score of the wrapped normal grows like ``1 / sigma_t`` (up to
~200 per coordinate at ``sigma_min = 0.005``), which a network should not have to output. So the
denoiser's ``score_frac`` is the score *in units of its RMS at that step*: the score estimate is
``eps_F_hat = score_frac / sqrt(lambda_t)``, and Eq. 2 becomes exactly
``lambda_t |score - eps_F_hat|² = |sqrt(lambda_t) score - score_frac|²``. Samplers convert back with
:meth:`JointDiffusion.score_from_model`.

**Modes** (``DiffusionConfig.mode``). ``"joint"`` (the paper) noises both fields at the same step.
``"lattice"`` and ``"coords"`` are the ablation "without joint diffusion": only that field is
noised and scored, the other is passed to the model clean and its loss term is not computed. Two
such models, pre-trained separately, are combined in fine-tuning (``FinetuneConfig.extra_init``).
A one-field model cannot generate structures, so the sampler refuses it.

Time steps are integers ``t`` in ``1..T``; index 0 of every table is the clean end
(``alpha_bar_0 = 1``, ``sigma_0 = 0``). This module holds no learnable parameters; its tables are
buffers so that they travel in ``state_dict`` and follow ``.to(device)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from crysdiff.card import StepTables, beta_schedule

__all__ = [
    "DIFFUSION_MODES",
    "DiffusionConfig",
    "JointDiffusion",
    "wrap",
    "wrapped_normal_log_density",
    "wrapped_normal_score",
    "sigma_schedule",
    "score_norm_weights",
]


DIFFUSION_MODES = ("joint", "lattice", "coords")


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of the joint lattice / coordinate diffusion.

    Attributes:
        timesteps: number of diffusion steps ``T`` (shared by both processes).
        beta_schedule: lattice DDPM schedule, ``"cosine"`` (paper) or ``"linear"``.
        beta_start, beta_end: endpoints of the linear schedule (unused by ``"cosine"``).
        sigma_min, sigma_max: ends of the exponential noise schedule of the fractional coordinates;
            ``sigma_max = 0.5`` makes ``q(F_T)`` indistinguishable from uniform on the torus.
        score_images: periodic images ``n = -K..K`` summed in the wrapped normal. The first omitted
            image has relative weight ``exp(-(K + 1/2)² / (2 sigma²))``, ~2e-11 for ``K = 3`` at
            ``sigma = 0.5``, so 3 is exact in float64 for ``sigma_max <= 0.5``.
        lambda_grid: points of the periodic trapezoid rule that computes ``lambda_t``; the rule is
            spectrally accurate once the spacing is a few times below ``sigma_min``.
        coord_loss_weight, lattice_loss_weight: weights of ``L_F`` and ``L_L`` in the total loss.
        mode: ``"joint"`` (default: both fields), ``"lattice"`` or ``"coords"`` (only that field is
            diffused; the ablation "without joint diffusion").
    """

    timesteps: int = 1000
    beta_schedule: str = "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sigma_min: float = 0.005
    sigma_max: float = 0.5
    score_images: int = 3
    lambda_grid: int = 2048
    coord_loss_weight: float = 1.0
    lattice_loss_weight: float = 1.0
    mode: str = "joint"

    def __post_init__(self):
        if self.mode not in DIFFUSION_MODES:
            raise ValueError(f"unknown diffusion mode {self.mode!r}: expected one of {', '.join(DIFFUSION_MODES)}")


def wrap(frac_coords: torch.Tensor) -> torch.Tensor:
    """``w(F) = F - floor(F)`` into ``[0, 1)``, mapping values that round to 1.0 onto 0.0."""
    wrapped = frac_coords - torch.floor(frac_coords)
    return torch.where(wrapped >= 1.0, torch.zeros_like(wrapped), wrapped)


def _image_terms(d: torch.Tensor, sigma: torch.Tensor, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacements to every periodic image ``x = d' + n`` and their log weights ``-x² / 2σ²``."""
    d = d - torch.round(d)  # [...] in [-1/2, 1/2]; the density is 1-periodic
    n = torch.arange(-images, images + 1, dtype=d.dtype, device=d.device)  # [2K+1]
    x = d[..., None] + n  # [..., 2K+1]
    log_weight = -(x**2) / (2 * sigma[..., None] ** 2)
    return x, log_weight


def wrapped_normal_log_density(d: torch.Tensor, sigma: torch.Tensor | float, images: int = 3) -> torch.Tensor:
    """Log density on the unit circle of the wrapped normal with displacement ``d`` (elementwise).

    ``log q(d) = log sum_n exp(-(d + n)² / (2σ²)) - ½ log(2πσ²)``, evaluated with log-sum-exp.
    """
    sigma = torch.as_tensor(sigma, dtype=d.dtype, device=d.device).expand_as(d)
    _, log_weight = _image_terms(d, sigma, images)
    return torch.logsumexp(log_weight, dim=-1) - 0.5 * torch.log(2 * math.pi * sigma**2)


def wrapped_normal_score(d: torch.Tensor, sigma: torch.Tensor | float, images: int = 3) -> torch.Tensor:
    """``∂/∂d log q(d)`` of the wrapped normal, elementwise, stable for small ``sigma``.

    The score is a softmax-weighted average over images, ``sum_n w_n · (-(d + n) / σ²)`` with
    ``w = softmax(-(d + n)² / 2σ²)``, so there is never a 0/0 or an overflowing exponential
    (at ``σ = 0.005`` the naive ratio of sums underflows to 0/0 for ``|d| > 0.2``).
    """
    sigma = torch.as_tensor(sigma, dtype=d.dtype, device=d.device).expand_as(d)
    x, log_weight = _image_terms(d, sigma, images)
    weight = torch.softmax(log_weight, dim=-1)
    return -(weight * x).sum(-1) / sigma**2


def sigma_schedule(sigma_min: float, sigma_max: float, timesteps: int) -> torch.Tensor:
    """``[T+1]`` float64: ``sigma_0 = 0`` then geometric from ``sigma_min`` (t=1) to ``sigma_max`` (t=T)."""
    if timesteps == 1:
        steps = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        exponent = torch.arange(timesteps, dtype=torch.float64) / (timesteps - 1)
        steps = sigma_min * (sigma_max / sigma_min) ** exponent
    return torch.cat([torch.zeros(1, dtype=torch.float64), steps])


def score_norm_weights(sigmas: torch.Tensor, images: int = 3, grid: int = 2048, chunk: int = 64) -> torch.Tensor:
    """``lambda = 1 / E_{d ~ q_σ}[score(d)²]`` per coordinate, for each ``σ`` in ``sigmas`` (float64).

    The integrand ``q(d) score(d)²`` is smooth and 1-periodic, so the trapezoid rule on a uniform
    grid over one period converges exponentially fast: deterministic, no Monte Carlo noise. For
    ``σ`` well below 1/2 the answer tends to ``σ²`` (the unwrapped Gaussian), which the tests check.
    """
    sigmas = sigmas.to(torch.float64)
    d = torch.arange(grid, dtype=torch.float64) / grid - 0.5  # [G] one period
    out = []
    for block in sigmas.split(chunk):
        s = block[:, None].expand(-1, grid)  # [C, G]
        dd = d[None, :].expand_as(s)
        density = wrapped_normal_log_density(dd, s, images).exp()
        score = wrapped_normal_score(dd, s, images)
        out.append(1.0 / (density * score**2).mean(-1))  # mean over a unit period = integral
    return torch.cat(out)


class JointDiffusion(nn.Module, StepTables):
    """Forward noising and the pre-training loss for ``(F, L)`` (no learnable parameters).

    Buffers (float64, index ``t`` = step ``t``): ``beta``, ``alpha``, ``alpha_bar`` (``[T+1]``,
    ``alpha_bar[0] = 1``), ``sigma`` (``[T+1]``, ``sigma[0] = 0``) and ``lambda_t`` (``[T+1]``,
    ``lambda_t[0] = 0``).
    """

    def __init__(self, config: DiffusionConfig = DiffusionConfig()):
        super().__init__()
        self.config = config
        beta = beta_schedule(config.beta_schedule, config.timesteps, config.beta_start, config.beta_end)
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), beta])  # [T+1]
        self.register_buffer("beta", beta)
        self.register_buffer("alpha", 1 - beta)
        self.register_buffer("alpha_bar", torch.cumprod(1 - beta, 0))
        sigma = sigma_schedule(config.sigma_min, config.sigma_max, config.timesteps)
        self.register_buffer("sigma", sigma)
        lam = score_norm_weights(sigma[1:], config.score_images, config.lambda_grid)
        self.register_buffer("lambda_t", torch.cat([torch.zeros(1, dtype=torch.float64), lam]))

    def noise_lattice(self, lattice: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``L_t = sqrt(alpha_bar_t) L_0 + sqrt(1 - alpha_bar_t) eps``; ``lattice``, ``eps`` ``[B, 3, 3]``, ``t`` ``[B]``."""
        ab = self._at(self.alpha_bar, t, lattice)[:, None, None]  # [B, 1, 1]
        return ab.sqrt() * lattice + (1 - ab).sqrt() * eps

    def noise_frac(self, frac_coords: torch.Tensor, t_atom: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``F_t = w(F_0 + sigma_t eps)`` and the target score ``∇ log q(F_t | F_0)``, both ``[N, 3]``.

        ``t_atom`` is ``[N]``, the time step of each atom's crystal. The score is evaluated at the
        unwrapped displacement ``sigma_t eps`` (identical to ``F_t - F_0`` modulo 1, but exact).
        """
        sigma = self._at(self.sigma, t_atom, frac_coords)[:, None]  # [N, 1]
        displacement = sigma * eps  # [N, 3]
        score = wrapped_normal_score(displacement, sigma.expand_as(displacement), self.config.score_images)
        return wrap(frac_coords + displacement), score

    def score_from_model(self, score_frac: torch.Tensor, t_atom: torch.Tensor) -> torch.Tensor:
        """The score estimate ``eps_F_hat = score_frac / sqrt(lambda_t)`` from the network's normalised output."""
        return score_frac / self._at(self.lambda_t, t_atom, score_frac).sqrt()[:, None]

    def loss(self, model, batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Alg. 1: noise a batch at one random step per crystal and score the model's denoising.

        ``model(batch, frac_coords, lattice, t)`` must return ``eps_lattice`` ``[B, 3, 3]`` and
        ``score_frac`` ``[N, 3]`` (see :class:`crysdiff.denoiser.CrysDiffDenoiser`).

        Weighting: ``loss_lattice`` is the squared error averaged over the 9 entries of each
        lattice and then over crystals (every crystal counts once, Eq. 1). ``loss_coords`` is
        ``|sqrt(lambda_t) score - score_frac|²`` averaged over the 3 coordinates of each atom and
        then over all atoms of the batch (every atom counts once, so larger cells weigh more, as in
        Eq. 2 summed over atoms; ``lambda_t`` makes each term ~1 whatever ``t``). Averaging over
        coordinates rather than summing puts both terms on the same scale: a model that outputs
        zeros scores ~1 on each.

        With ``mode="lattice"`` (``"coords"``) the coordinates (lattice) stay clean and only the
        other term is computed and returned.

        Returns:
            ``dict(loss, loss_lattice, loss_coords)`` (the terms of the mode), scalars.
        """
        lattice0, frac0 = batch.lattice, batch.frac_coords
        num_crystals = lattice0.shape[0]
        device, dtype = lattice0.device, lattice0.dtype
        noise_lattice, noise_coords = self.config.mode in ("joint", "lattice"), self.config.mode in ("joint", "coords")
        t = self.sample_timesteps(num_crystals, device=device, generator=generator)  # [B]
        t_atom = t[batch.batch]  # [N]
        lattice_t, frac_t = lattice0, frac0
        if noise_lattice:
            eps_lattice = torch.randn(lattice0.shape, generator=generator, device=device, dtype=dtype)
            lattice_t = self.noise_lattice(lattice0, t, eps_lattice)
        if noise_coords:
            eps_frac = torch.randn(frac0.shape, generator=generator, device=device, dtype=dtype)
            frac_t, score = self.noise_frac(frac0, t_atom, eps_frac)
        out = model(batch, frac_t, lattice_t, t)
        terms = {}
        if noise_lattice:
            terms["loss_lattice"] = ((out["eps_lattice"] - eps_lattice) ** 2).mean()
        if noise_coords:
            target = score * self._at(self.lambda_t, t_atom, score).sqrt()[:, None]  # [N, 3], ~unit RMS
            terms["loss_coords"] = ((out["score_frac"] - target) ** 2).mean()
        weights = {"loss_lattice": self.config.lattice_loss_weight, "loss_coords": self.config.coord_loss_weight}
        loss = sum(weights[name] * value for name, value in terms.items())
        return {"loss": loss, **terms}
