"""Generating structures with a trained denoiser: the reverse of :class:`~crysdiff.diffusion.JointDiffusion`.

:func:`sample_structures` starts from the priors ``L_T ~ N(0, I)`` and ``F_T ~ U[0, 1)`` and walks
back in time for all crystals of a batch at once, each step going from ``t`` to the next smaller
step ``s`` of the schedule (``s = t - 1`` unless ``timesteps`` asks for fewer steps):

* **Lattice**, ancestral DDPM: ``L_s ~ N(mu, var)`` with
  ``mu = (L_t - beta / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha)``,
  ``alpha = alpha_bar_t / alpha_bar_s``, ``beta = 1 - alpha`` and the posterior variance
  ``var = beta (1 - alpha_bar_s) / (1 - alpha_bar_t)``; the last step returns the mean.
* **Fractional coordinates**, predictor-corrector (Song et al. 2021) for the variance-exploding
  process on the torus: first ``corrector_steps`` annealed Langevin steps at ``sigma_t``,
  ``F <- w(F + a score + sqrt(2a) z)`` with ``a = step_lr (sigma_t / sigma_min)²``, then the
  reverse-diffusion predictor ``F_s = w(F + (sigma_t² - sigma_s²) score + sqrt(sigma_t² - sigma_s²) z)``
  (no noise on the last step).

Levers (each measured in ``docs/method.md``, "Validity of generated structures"):

* ``lattice_snr > 0`` lets the corrector act on the lattice too, with the signal-to-noise rule of
  Song et al. (2021, Alg. 5): ``L <- L + a g + sqrt(2a) z`` with the score
  ``g = -eps_hat / sqrt(1 - alpha_bar_t)`` and ``a = 2 alpha (snr |z| / |g|)²`` per crystal. It reuses
  the corrector's network call, so it costs nothing extra. ``crysdiff sample`` uses 0.1, chosen on
  validation compositions; this function's default, 0, is the paper's sampler (the one
  ``crysdiff evaluate-csp``'s figures were measured with).
* ``schedule="quadratic"`` spaces a strided schedule (``timesteps < T``) quadratically, denser near
  ``t = 1`` where the structure settles.
* ``late_below``: the steps ``t <= late_below`` take their own corrector, ``late_corrector_steps``
  steps of size ``late_step_lr`` (either ``None``: as the other steps). ``crysdiff sample`` uses
  ``late_below=500, late_step_lr=3e-5`` (chosen on validation compositions): in the second half of
  the chain, where ``sigma_t`` falls from 0.05 to 0.005 and an oxygen atom that sits on a cation's
  site (the perovskites' usual failure) locks in, the Langevin step is three times larger, which
  shakes such pairs apart. Same cost (the number of network calls does not change). Off by default
  here, like ``lattice_snr``.

``step_lr = 1e-5`` makes the Langevin step at ``sigma_min = 0.005`` move an atom by
``sqrt(2e-5) ~ 0.0045``, about ``sigma_min`` itself: large enough to correct, small enough not to
undo the step. Scale it with ``sigma_min²`` if you change the schedule.

The batch supplies ``atomic_numbers``, ``num_atoms``, ``batch`` and ``edge_index``; its coordinates
and lattice are ignored. A kNN graph (big cells) is the batch's fixed graph, built from whatever
coordinates the batch held; all-pairs graphs do not depend on the coordinates.
"""

from __future__ import annotations

import torch

from crysdiff.diffusion import JointDiffusion, wrap
from crysdiff.config import SCHEDULES  # torch-free, so the CLI can build its parser without torch

__all__ = ["sample_structures", "time_schedule", "require_joint", "SCHEDULES"]


def require_joint(diffusion: JointDiffusion, source: str = "the model") -> None:
    """Raise ``ValueError`` unless ``diffusion`` diffuses both fields: a model pre-trained with
    ``diffusion.mode=lattice`` (or ``coords``) never learned to denoise the other field, so it
    cannot generate structures from noise."""
    mode = diffusion.config.mode
    if mode != "joint":
        other = "fractional coordinates" if mode == "lattice" else "lattice"
        raise ValueError(f"{source} was pre-trained with diffusion.mode={mode} (the {other} were never noised), "
                         f"so it cannot generate structures; sampling needs a model pre-trained with diffusion.mode=joint")




def time_schedule(total: int, steps: int | None = None, schedule: str = "linear") -> list[int]:
    """The descending time steps visited: all of ``T..1``, or ``steps`` of them (``T`` and 1
    included) spaced evenly (``"linear"``) or quadratically, denser near 1 (``"quadratic"``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown time-step schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if steps is None or steps >= total:
        return list(range(total, 0, -1))
    if steps < 1:
        raise ValueError(f"timesteps must be at least 1, got {steps}")
    fraction = torch.linspace(1, 0, steps, dtype=torch.float64)
    grid = (1 + (total - 1) * (fraction if schedule == "linear" else fraction**2)).round().long().unique().flip(0)
    return [int(t) for t in grid]


@torch.no_grad()
def sample_structures(
    model,
    diffusion: JointDiffusion,
    batch,
    *,
    corrector_steps: int = 1,
    step_lr: float = 1e-5,
    timesteps: int | None = None,
    lattice_snr: float = 0.0,
    schedule: str = "linear",
    late_below: int = 0,
    late_corrector_steps: int | None = None,
    late_step_lr: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``(frac_coords [N, 3], lattice [B, 3, 3])`` for the compositions in ``batch``.

    Args:
        model: ``(batch, frac_coords, lattice, t) -> dict(eps_lattice, score_frac)`` (a
            :class:`~crysdiff.denoiser.CrysDiffDenoiser`).
        diffusion: the process the model was trained with.
        corrector_steps: Langevin corrector steps per time step (0 = predictor only).
        step_lr: Langevin step size at ``sigma_min`` (see the module docstring).
        timesteps: number of reverse steps (``None`` = all ``T``); fewer steps stride through the schedule.
        lattice_snr: signal-to-noise ratio of a Langevin corrector on the lattice (0 = coordinates only).
        schedule: spacing of a strided schedule, ``"linear"`` or ``"quadratic"``.
        late_below: the steps ``t <= late_below`` are "late" (0 = none): they take
            ``late_corrector_steps`` corrector steps of size ``late_step_lr`` (``None``: as the others).
        generator: for reproducible samples.
        progress: show a progress bar (needs ``tqdm``).
    """
    require_joint(diffusion)
    frac, lattice, pairs, noise = _prior(model, diffusion, batch, timesteps, schedule, generator)
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="sampling")
    settings = dict(corrector_steps=corrector_steps, step_lr=step_lr, lattice_snr=lattice_snr,
                    late_below=late_below, late_corrector_steps=late_corrector_steps, late_step_lr=late_step_lr)
    return _reverse(model, diffusion, batch, frac, lattice, pairs, noise, **settings)


def _prior(model, diffusion, batch, timesteps, schedule, generator):
    """The start of the chain, ``L_T ~ N(0, I)`` and ``F_T ~ U[0, 1)``, the ``(t, s)`` steps to take
    and the noise source (drawing from ``generator``)."""
    device = batch.atomic_numbers.device
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    dtype = params[0].dtype if params else batch.lattice.dtype
    num_crystals, num_atoms = int(batch.num_atoms.shape[0]), int(batch.atomic_numbers.shape[0])

    def noise(*shape):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    lattice = noise(num_crystals, 3, 3)
    frac = torch.rand(num_atoms, 3, generator=generator, device=device, dtype=dtype)
    steps = time_schedule(diffusion.timesteps, timesteps, schedule)
    return frac, lattice, list(zip(steps, steps[1:] + [0])), noise


@torch.no_grad()
def _reverse(model, diffusion, batch, frac, lattice, pairs, noise, *, corrector_steps, step_lr, lattice_snr,
             late_below=0, late_corrector_steps=None, late_step_lr=None):
    """Walk ``(frac, lattice)`` back through the ``(t, s)`` steps ``pairs`` (the body of
    :func:`sample_structures`)."""
    device, dtype = frac.device, frac.dtype
    num_crystals, num_atoms = lattice.shape[0], frac.shape[0]
    table = {k: getattr(diffusion, k).to(device, dtype) for k in ("alpha_bar", "sigma")}
    sigma_min = table["sigma"][1]
    for t, s in pairs:
        t_crystal = torch.full((num_crystals,), t, dtype=torch.long, device=device)
        t_atom = t_crystal[batch.batch]
        sigma_t, sigma_s = table["sigma"][t], table["sigma"][s]
        ab_t, ab_s = table["alpha_bar"][t], table["alpha_bar"][s]
        alpha = ab_t / ab_s
        late = t <= late_below
        repeats = late_corrector_steps if late and late_corrector_steps is not None else corrector_steps
        lr = late_step_lr if late and late_step_lr is not None else step_lr
        # corrector: annealed Langevin at sigma_t (and at alpha_bar_t for the lattice)
        step = lr * (sigma_t / sigma_min) ** 2
        for _ in range(repeats):
            out = model(batch, frac, lattice, t_crystal)
            score = diffusion.score_from_model(out["score_frac"], t_atom)
            frac = wrap(frac + step * score + (2 * step).sqrt() * noise(num_atoms, 3))
            if lattice_snr > 0:
                lattice = _lattice_langevin(lattice, out["eps_lattice"], ab_t, alpha, lattice_snr, noise)
        # predictor: one reverse step t -> s for both fields
        out = model(batch, frac, lattice, t_crystal)
        score = diffusion.score_from_model(out["score_frac"], t_atom)
        variance = sigma_t**2 - sigma_s**2
        frac = frac + variance * score + (variance.sqrt() * noise(num_atoms, 3) if s > 0 else 0)
        beta = 1 - alpha
        lattice = (lattice - beta / (1 - ab_t).sqrt() * out["eps_lattice"]) / alpha.sqrt()
        if s > 0:
            lattice = lattice + (beta * (1 - ab_s) / (1 - ab_t)).sqrt() * noise(num_crystals, 3, 3)
        frac = wrap(frac)
    return frac, lattice


def _lattice_langevin(lattice, eps, ab_t, alpha, snr, noise):
    """One Langevin step on the lattices ``[B, 3, 3]`` with Song et al.'s step ``a = 2 alpha (snr |z| / |g|)²``."""
    score = -eps / (1 - ab_t).sqrt()
    z = noise(*lattice.shape)
    norm = lambda x: x.flatten(1).norm(dim=1)[:, None, None]  # noqa: E731
    step = 2 * alpha * (snr * norm(z) / norm(score).clamp_min(1e-12)) ** 2
    return lattice + step * score + (2 * step).sqrt() * z
