"""Property heads on top of the pooled structure representation (fine-tuning, paper Alg. 2/3).

All heads read ``crystal_features`` — ``[B, H]``, the mean over atoms of the encoder's final atom
states — and have one call signature, ``head(crystal_features, y_t, mu, t, alpha_bar)`` (``y_t``,
``mu``, ``t`` ``[B]``; ``alpha_bar`` the schedule's ``[T+1]`` table, which heads that do not need it
ignore). What a head returns, and how :class:`~crysdiff.property_model.PropertyModel` predicts with
it, follows from its declared type:

* :class:`NoiseHead`: returns ``eps_hat`` ``[B]``; sampled by the general chain
  (:func:`crysdiff.property_sampling.sample_chain`, the head runs on every sample at every step).
* :class:`AffineNoiseHead`: a noise head affine in ``y_t`` and ``mu`` that also gives its
  coefficients for every step (``chain_coefficients``); sampled by the fast path
  (:func:`crysdiff.property_sampling.sample_affine`).
* :class:`RegressionHead`: returns the standardised value itself (no diffusion, no interval).

:func:`build_head` builds every kind from a :class:`HeadConfig`, which checks its own combinations.

* :class:`CardNoiseHead` (``kind="card"``, the paper's setting with ``prior="mean"``): the noise predictor
  ``eps_hat(z, y_t, mu, t) = a(z, t) + b(z, t) * y_t + c(z, t) * mu``, where ``a, b, c`` come from an
  MLP of the structure representation modulated by a sinusoidal embedding of ``t``. It sees the
  structure, ``y_t``, the prior mean and the time step, as CARD's head does. Being affine in
  ``y_t`` and ``mu`` it spans exactly the noise predictors of Gaussian conditionals
  ``p(y | x) = N(m(x), s(x)²)`` (for such a conditional the optimal ``E[eps | y_t]`` is affine in
  ``y_t``), which is what a regression target needs, and it makes inference cheap: the coefficients
  are computed once per crystal and time step, independent of the number of samples (see
  :meth:`CardNoiseHead.chain_coefficients`). The MLP predicts a residual around the prior's own
  noise predictor, ``E[eps | y_t]`` for ``y_0 ~ N(mu, 1)``, which is ``sqrt(1 − ᾱ_t) (y_t − mu)``: an
  untrained head then samples the prior ``N(mu, 1)`` instead of a chain that amplifies ``y_t`` (with
  ``eps_hat = 0`` the reverse chain multiplies the spread by about ``1/sqrt(ᾱ_T)``, ~150x with the
  default schedule). The family is unchanged; only the starting point and how ``b, c`` depend on
  ``t`` differ from a plain MLP output.
* :class:`GaussianNoiseHead` (``kind="gaussian"``, the default, with CARD's learned prior): the
  same affine family, parameterised by what it stands for: the head predicts a mean ``m(z)`` (by
  default a correction to the prior mean ``mu``) and a spread ``s(z)`` and returns the exact
  ``E[eps | y_t]`` of the chain started from ``y_0 ~ N(mu + m, s²)``, i.e. ``a, b, c`` in closed form
  from ``ᾱ_t`` (so it needs the schedule; see :meth:`GaussianNoiseHead.noise_coefficients`). The
  loss is still Alg. 2's noise loss; only how ``a, b, c`` depend on ``z`` and ``t`` changes (the
  ``card`` head must learn the product of ``m(z)`` with a function of ``t`` through its MLP).
* :class:`Eq4NoiseHead` (``kind="eq4"``): the paper's Eq. 4 as printed,
  ``eps_hat = y_t * phi(mean h)``: no time step, no prior mean (the paper's experiments' literal reading).
* :class:`RegressionHead` (``kind="regression"``): a deterministic MLP ``z -> y``, the plain-regression
  baseline (with ``prior="mean"``: it has no prior). CARD's learned prior ``f(x)`` is the same MLP,
  :class:`ValueMLP`, next to a diffusion head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crysdiff.layers import time_embedding

__all__ = [
    "HeadConfig",
    "PropertyHead",
    "NoiseHead",
    "AffineNoiseHead",
    "CardNoiseHead",
    "GaussianNoiseHead",
    "Eq4NoiseHead",
    "RegressionHead",
    "ValueMLP",
    "HEADS",
    "build_head",
]

KINDS = ("gaussian", "card", "eq4", "regression")
PRIORS = ("learned", "mean")


@dataclass(frozen=True)
class HeadConfig:
    """Property head settings.

    Attributes:
        kind: ``"gaussian"`` (default), ``"card"`` (the paper's setting, with ``prior="mean"``),
            ``"eq4"`` (the paper's literal Eq. 4) or ``"regression"`` (plain L1 regression, no
            diffusion, with ``prior="mean"``). Why the default is not the paper's: docs/method.md,
            "The default head".
        hidden_dim: width of the head MLPs.
        time_dim: size of the sinusoidal time embedding.
        prior: ``"learned"`` (default; CARD: a deterministic regression head ``f(x)`` trained
            jointly with an L1 loss) or ``"mean"`` (the paper: the training mean ``ȳ``).
        dropout: dropout on the structure representation inside the heads.

    The noise heads are residuals around the prior: the ``card`` head adds the prior's noise
    predictor ``sqrt(1 − ᾱ_t) (y_t − mu)`` to the MLP's coefficients, so training starts from the
    prior ``N(mu, 1)``; the ``gaussian`` head's mean is ``mu + m(z)``.
    """

    kind: str = "gaussian"
    hidden_dim: int = 128
    time_dim: int = 64
    prior: str = "learned"
    dropout: float = 0.0

    def __post_init__(self):
        """Every check of the head's settings, in one place (an error names the key)."""
        for key, allowed in (("kind", KINDS), ("prior", PRIORS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown head.{key} {getattr(self, key)!r}: expected one of {', '.join(allowed)}")
        if self.kind == "regression" and self.prior == "learned":
            raise ValueError("head.kind=regression predicts the value itself and has no prior: pass head.prior=mean "
                             "(head.prior=learned is CARD's prior of a diffusion head)")

    @property
    def is_diffusion(self) -> bool:
        return self.kind != "regression"


def _mlp(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """Dropout, then a two-layer SiLU MLP ``in_dim -> 1``."""
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
        nn.Linear(hidden_dim, 1),
    )


class ValueMLP(nn.Module):
    """``[B, H] -> [B]``: a two-layer MLP (CARD's learned prior ``f(x)``, Eq. 4's ``phi``)."""

    def __init__(self, in_dim: int, hidden_dim: int = 128, dropout: float = 0.0):
        super().__init__()
        self.net = _mlp(in_dim, hidden_dim, dropout)

    def forward(self, crystal_features: torch.Tensor) -> torch.Tensor:
        return self.net(crystal_features).squeeze(-1)  # [B]


class PropertyHead(nn.Module):
    """A property head: ``forward(crystal_features, y_t, mu, t, alpha_bar) -> [B]`` (see the module docstring)."""

    def forward(self, crystal_features: torch.Tensor, y_t: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                alpha_bar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NoiseHead(PropertyHead):
    """A head that predicts the noise ``eps_hat`` of the CARD chain (sampled by the general chain)."""


class AffineNoiseHead(NoiseHead):
    """A noise head ``eps_hat = a + b y_t + c mu`` whose coefficients for every step come at once."""

    def chain_coefficients(self, crystal_features: torch.Tensor, timesteps: int, alpha_bar: torch.Tensor) -> torch.Tensor:
        """``[B, T+1, 3]`` coefficients ``(a, b, c)`` for every step ``t = 0..T`` (row 0 unused, zeros)."""
        raise NotImplementedError


class RegressionHead(PropertyHead):
    """The plain L1 regression baseline: the standardised value ``[B]`` from the structure alone."""

    def __init__(self, in_dim: int, config: HeadConfig = HeadConfig(kind="regression", prior="mean")):
        super().__init__()
        self.net = _mlp(in_dim, config.hidden_dim, config.dropout)

    def forward(self, crystal_features, y_t=None, mu=None, t=None, alpha_bar=None):
        return self.net(crystal_features).squeeze(-1)  # [B]; y_t, mu, t, alpha_bar unused


class CardNoiseHead(AffineNoiseHead):
    """``eps_hat = a(z,t) + b(z,t) y_t + c(z,t) mu`` (see the module docstring)."""

    def __init__(self, in_dim: int, config: HeadConfig = HeadConfig()):
        super().__init__()
        self.time_dim = config.time_dim
        self.structure = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(in_dim, config.hidden_dim), nn.SiLU())
        self.time = nn.Linear(config.time_dim, 2 * config.hidden_dim)  # FiLM scale and shift
        self.hidden = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, 3)  # a, b, c
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def coefficients(self, crystal_features: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` coefficients (a, b, c) for features ``[..., H]`` and time steps ``t`` ``[...]``
        (``alpha_bar``: the schedule's ``[T+1]`` table)."""
        scale, shift = self.time(time_embedding(t, self.time_dim).to(crystal_features.dtype)).chunk(2, dim=-1)
        h = self.structure(crystal_features) * (1 + scale) + shift
        coeffs = self.out(torch.nn.functional.silu(self.hidden(h)))
        k = (1 - alpha_bar.to(coeffs.device, coeffs.dtype)[t]).sqrt()  # [...]: the prior's E[eps | y_t] = k (y_t - mu)
        return coeffs + torch.stack([torch.zeros_like(k), k, -k], dim=-1)

    def forward(self, crystal_features, y_t, mu, t, alpha_bar):
        """``eps_hat`` ``[B]`` for features ``[B, H]`` and ``y_t``, ``mu``, ``t`` ``[B]``."""
        a, b, c = self.coefficients(crystal_features, t, alpha_bar).unbind(-1)
        return a + b * y_t + c * mu

    def chain_coefficients(self, crystal_features: torch.Tensor, timesteps: int, alpha_bar: torch.Tensor,
                           chunk: int = 100) -> torch.Tensor:
        """``[B, T+1, 3]`` coefficients for every step ``t = 0..T`` (row 0 unused), computed once
        per crystal: the reverse chain then needs no network call per sample."""
        batch = crystal_features.shape[0]
        z = crystal_features[:, None, :]  # [B, 1, H]
        out = [torch.zeros(batch, 1, 3, dtype=crystal_features.dtype, device=crystal_features.device)]
        for start in range(1, timesteps + 1, chunk):
            t = torch.arange(start, min(start + chunk, timesteps + 1), device=crystal_features.device)
            out.append(self.coefficients(z, t[None, :].expand(batch, -1), alpha_bar))  # [B, chunk, 3]
        return torch.cat(out, dim=1)


class GaussianNoiseHead(AffineNoiseHead):
    """``eps_hat = E[eps | y_t]`` for ``y_0 ~ N(m(z), s(z)²)`` (see the module docstring).

    With ``y_t = √ᾱ y_0 + (1 − √ᾱ) mu + √(1 − ᾱ) eps``, ``eps`` and ``y_t`` are jointly Gaussian, so
    ``E[eps | y_t] = k (y_t − √ᾱ m − (1 − √ᾱ) mu)`` with ``k = √(1 − ᾱ) / (ᾱ s² + 1 − ᾱ)``: affine
    in ``y_t`` and ``mu`` with ``a = −k √ᾱ m``, ``b = k``, ``c = −k (1 − √ᾱ)``. The methods take the
    schedule's ``alpha_bar`` table ``[T+1]`` (``PropertyDiffusion.alpha_bar``).

    The head's ``m`` is a residual around the prior mean: the target is ``N(mu + m, s²)``, so
    ``a = −k √ᾱ m``, ``c = −k``. Under the paper's constant prior (``mu = 0`` in standardised units)
    this is the same head as an absolute mean; under CARD's learned prior the untrained head
    already centres its samples on ``f(x)``, and the noise loss only has to learn the correction
    and the spread.
    """

    min_std = 1e-3  # standardised units: keeps k finite at t = 1

    def __init__(self, in_dim: int, config: HeadConfig = HeadConfig()):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(in_dim, config.hidden_dim), nn.SiLU(),
            nn.Linear(config.hidden_dim, config.hidden_dim), nn.SiLU(), nn.Linear(config.hidden_dim, 2),
        )

    def moments(self, crystal_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``m, s`` ``[...]`` (standardised units) for features ``[..., H]``."""
        m, raw = self.net(crystal_features).unbind(-1)
        return m, torch.nn.functional.softplus(raw + 0.5413) + self.min_std  # softplus(0.5413) = 1: starts at s ≈ 1

    @staticmethod
    def noise_coefficients(m: torch.Tensor, s: torch.Tensor, alpha_bar_t: torch.Tensor, relative: bool = False) -> torch.Tensor:
        """``[..., 3]`` coefficients ``(a, b, c)`` of ``E[eps | y_t]`` for broadcastable ``m, s, ᾱ_t``:
        for ``y_0 ~ N(m, s²)``, or ``N(mu + m, s²)`` when ``relative``."""
        root = alpha_bar_t.sqrt()
        k = (1 - alpha_bar_t).sqrt() / (alpha_bar_t * s ** 2 + 1 - alpha_bar_t)
        a, b, c = -k * root * m, k, (-k if relative else -k * (1 - root))
        return torch.stack(torch.broadcast_tensors(a, b, c), dim=-1)

    def forward(self, crystal_features, y_t, mu, t, alpha_bar: torch.Tensor):
        """``eps_hat`` ``[B]`` for features ``[B, H]``, ``y_t``, ``mu``, ``t`` ``[B]`` and the ``[T+1]`` table."""
        m, s = self.moments(crystal_features)
        a, b, c = self.noise_coefficients(m, s, alpha_bar.to(m.device, m.dtype)[t], relative=True).unbind(-1)
        return a + b * y_t + c * mu

    def chain_coefficients(self, crystal_features: torch.Tensor, timesteps: int, alpha_bar: torch.Tensor) -> torch.Tensor:
        """``[B, T+1, 3]`` coefficients for every step (row 0 unused, zeros), one head call per crystal."""
        m, s = self.moments(crystal_features)  # [B]
        ab = alpha_bar.to(m.device, m.dtype)[None, 1:timesteps + 1]  # [1, T]
        coeffs = self.noise_coefficients(m[:, None], s[:, None], ab, relative=True)  # [B, T, 3]
        return torch.cat([torch.zeros_like(coeffs[:, :1]), coeffs], dim=1)


class Eq4NoiseHead(AffineNoiseHead):
    """The paper's Eq. 4 as printed: ``eps_hat = y_t * phi(mean h)`` (ignores ``mu``, ``t`` and the schedule)."""

    def __init__(self, in_dim: int, config: HeadConfig = HeadConfig()):
        super().__init__()
        self.phi = ValueMLP(in_dim, config.hidden_dim, config.dropout)

    def forward(self, crystal_features, y_t, mu, t, alpha_bar=None):
        return y_t * self.phi(crystal_features)

    def chain_coefficients(self, crystal_features: torch.Tensor, timesteps: int, alpha_bar=None) -> torch.Tensor:
        b = self.phi(crystal_features)  # [B]
        coeffs = torch.zeros(b.shape[0], timesteps + 1, 3, dtype=b.dtype, device=b.device)
        coeffs[:, 1:, 1] = b[:, None]
        return coeffs


HEADS: dict[str, type[PropertyHead]] = {"gaussian": GaussianNoiseHead, "card": CardNoiseHead, "eq4": Eq4NoiseHead,
                                        "regression": RegressionHead}


def build_head(in_dim: int, config: HeadConfig) -> PropertyHead:
    """The head named by ``config.kind`` (every kind, regression included), reading ``in_dim`` features."""
    return HEADS[config.kind](in_dim, config)
