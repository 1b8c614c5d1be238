"""The uncertainty of a prediction, from the samples of the reverse chain (paper Alg. 3).

* :func:`summarise`: the mean, spread and central 95% interval of samples ``[B, S]``.
* :func:`scale_spread` and :func:`conformal_interval_scale`: the split-conformal calibration of
  the spread (one factor, fitted on held-out crystals after fine-tuning or by ``crysdiff calibrate``).
* :func:`sample_summary`: what a model reports: samples clipped at its lower bound, moved by its
  interval scale and summarised; :func:`clipped_gaussian_mean`: the exact mean of a clipped
  Gaussian, which models with ``exact_mean`` report instead of the samples' mean.
* :func:`pool_members` and :func:`ensemble_summary`: an ensemble's pooled samples and summary.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["LEVEL", "summarise", "interval95", "scale_spread", "conformal_interval_scale", "sample_summary",
           "clipped_gaussian_mean", "pool_members", "ensemble_summary"]

LEVEL = 0.95  # the interval crysdiff predict reports (p2.5, p97.5)


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


def interval95(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, lower and upper end of the central 95% interval of samples ``[B, S]`` (numpy)."""
    low, high = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=1)
    return samples.mean(axis=1), low, high


def scale_spread(samples: torch.Tensor, mean: torch.Tensor, scale: float, lower_bound: float | None = None) -> torch.Tensor:
    """Samples ``[B, S]`` moved ``scale`` times further from their crystal's ``mean`` ``[B]``, clipped
    at ``lower_bound``. The map is increasing, so every quantile moves the same way:
    ``q' = clip(mean + scale (q − mean))``."""
    moved = mean[:, None] + scale * (samples - mean[:, None])
    return moved if lower_bound is None else moved.clamp_min(lower_bound)


def clipped_gaussian_mean(mean: torch.Tensor, std: torch.Tensor, lower_bound: float | None = None) -> torch.Tensor:
    """``E[max(Y, lower_bound)]`` ``[B]`` for ``Y ~ N(mean, std²)`` (``mean`` itself without a bound):
    ``mean + (L − mean) Φ(a) + std φ(a)`` with ``a = (L − mean) / std``, ``max(mean, L)`` where ``std = 0``."""
    if lower_bound is None:
        return mean
    a = (lower_bound - mean) / std.clamp_min(torch.finfo(std.dtype).tiny)
    density = torch.exp(-0.5 * a ** 2) / (2 * torch.pi) ** 0.5
    clipped = mean + (lower_bound - mean) * torch.special.ndtr(a) + std * density
    return torch.where(std > 0, clipped, mean.clamp_min(lower_bound))


def sample_summary(samples: torch.Tensor, scale: float = 1.0, lower_bound: float | None = None,
                   mean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A model's report from its samples ``[B, S]`` (original units): clipped at ``lower_bound``, the
    spread moved by ``scale`` about each crystal's mean, summarised (:func:`summarise`). The mean
    is that of the clipped samples, or ``mean`` ``[B]`` where given (the chain's exact one, already
    clipped: :func:`clipped_gaussian_mean`), which is then also the centre the spread is moved about."""
    if lower_bound is not None:
        samples = samples.clamp_min(lower_bound)
    if scale == 1.0 and mean is None:
        return summarise(samples)
    centre = samples.mean(dim=1) if mean is None else mean
    out = summarise(samples if scale == 1.0 else scale_spread(samples, centre, scale, lower_bound))
    out["mean"] = centre
    return out


def conformal_interval_scale(y, mean, low, high, level: float = LEVEL) -> tuple[float, dict]:
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


def pool_members(draws: list[torch.Tensor], widen: bool = True, lower_bound: float | None = None) -> torch.Tensor:
    """An ensemble's samples ``[B, S * M]`` from its ``M`` members' draws (each ``[B, S]``).

    Pooled as they are, the samples' variance is ``W + (M − 1)/M · B``: ``W`` the members' mean
    own variance, ``B`` the unbiased variance of their means. Read as draws of models over seeds, the
    variance of a new target about the ensemble mean is ``W + (1 + 1/M) · B`` (``B`` for the spread
    of the models, ``B/M`` for the error of the ensemble mean itself; Rubin's rule for combining
    ``M`` imputations). With ``widen`` each member's draws are moved so that its mean lies
    ``sqrt((M + 1)/(M − 1))`` times further from the ensemble mean, which gives the pooled samples
    exactly that variance and keeps each member's shape (skew, clipping). ``lower_bound`` clips the
    moved samples again, as one model's samples are clipped.
    """
    if not widen or len(draws) < 2:
        return torch.cat(draws, dim=1)
    members = len(draws)
    means = torch.stack([d.mean(dim=1) for d in draws], dim=1)  # [B, M]
    centre = means.mean(dim=1, keepdim=True)  # [B, 1]
    scale = ((members + 1) / (members - 1)) ** 0.5
    shifts = (scale - 1) * (means - centre)  # [B, M]
    pooled = torch.cat([d + shifts[:, k:k + 1] for k, d in enumerate(draws)], dim=1)
    return pooled if lower_bound is None else pooled.clamp_min(lower_bound)


def ensemble_summary(outs: list[dict[str, torch.Tensor]], widen: bool = True,
                     lower_bound: float | None = None) -> dict[str, torch.Tensor]:
    """An ensemble's report from its members' (:func:`sample_summary` with ``samples``): the pooled
    samples' spread and interval, the members' predictions averaged as ``mean``, and ``std_models``,
    the spread of the members' means."""
    out = summarise(pool_members([o["samples"] for o in outs], widen=widen, lower_bound=lower_bound))
    means = torch.stack([o["mean"] for o in outs], dim=1)  # [B, M]
    out["mean"] = means.mean(dim=1)  # the members' predictions averaged
    out["std_models"] = means.std(dim=1)
    return out
