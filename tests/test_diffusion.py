"""The joint diffusion: wrapped-normal score against autograd, schedules, lambda_t, and the loss."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
import torch

from crysdiff.batching import collate_crystals
from crysdiff.crystal import from_pymatgen, validate
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.diffusion import (
    DiffusionConfig,
    JointDiffusion,
    score_norm_weights,
    wrap,
    wrapped_normal_log_density,
    wrapped_normal_score,
)


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.1, 0.3, 0.5])
def test_score_matches_autograd_of_log_density(sigma):
    d = torch.cat([torch.linspace(-1.7, 1.7, 341, dtype=torch.float64), torch.tensor([0.4999, -0.4999, 0.5001, 1e-9])])
    d.requires_grad_(True)
    (grad,) = torch.autograd.grad(wrapped_normal_log_density(d, sigma).sum(), d)
    score = wrapped_normal_score(d.detach(), sigma)
    assert torch.isfinite(score).all()
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9 / sigma**2)


def test_score_limits():
    d = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    # small sigma: the Gaussian score of the nearest image, no 0/0 at |d| ~ 1/2
    torch.testing.assert_close(wrapped_normal_score(d[:2], 0.005), -d[:2] / 0.005**2)
    assert wrapped_normal_score(d[2:], 0.005).abs().item() < 1e-6  # both images equally near
    # the density integrates to one over a period
    grid = torch.arange(4096, dtype=torch.float64) / 4096 - 0.5
    for sigma in (0.005, 0.5):
        assert wrapped_normal_log_density(grid, sigma).exp().mean().item() == pytest.approx(1.0, rel=1e-9)
    # periodic in d; float32 works too
    torch.testing.assert_close(wrapped_normal_score(d + 3, 0.1), wrapped_normal_score(d, 0.1))
    assert torch.isfinite(wrapped_normal_score(d.float(), 0.005)).all()


def test_schedules_and_lambda():
    diffusion = JointDiffusion(DiffusionConfig(timesteps=100))
    sigma, lam = diffusion.sigma, diffusion.lambda_t
    assert sigma[0] == 0 and sigma[1].item() == pytest.approx(0.005) and sigma[-1].item() == pytest.approx(0.5)
    assert torch.all(sigma[1:] > 0) and torch.all(sigma[2:] > sigma[1:-1])
    assert diffusion.alpha_bar[0] == 1 and diffusion.alpha_bar[-1] < 1e-3
    assert torch.isfinite(lam[1:]).all() and torch.all(lam[1:] > 0)
    # small sigma: lambda -> sigma² (Gaussian); at sigma_max the wrapped normal is nearly flat
    assert lam[1].item() == pytest.approx(0.005**2, rel=1e-9)
    assert lam[-1].item() > 0.5**2
    # quadrature agrees with Monte Carlo
    gen = torch.Generator().manual_seed(0)
    for s in (0.05, 0.3, 0.5):
        d = s * torch.randn(400_000, generator=gen, dtype=torch.float64)
        mc = 1 / wrapped_normal_score(d, s).square().mean()
        assert score_norm_weights(torch.tensor([s])).item() == pytest.approx(mc.item(), rel=0.02)


def test_forward_marginals():
    diffusion = JointDiffusion(DiffusionConfig(timesteps=50))
    gen = torch.Generator().manual_seed(0)
    n = 20000
    lattice0 = torch.full((n, 3, 3), 4.0, dtype=torch.float64)
    t = torch.full((n,), 10)
    lattice_t = diffusion.noise_lattice(lattice0, t, torch.randn(n, 3, 3, generator=gen, dtype=torch.float64))
    ab = diffusion.alpha_bar[10]
    assert lattice_t.mean().item() == pytest.approx(4 * ab.sqrt().item(), abs=0.02)
    assert lattice_t.var().item() == pytest.approx(1 - ab.item(), rel=0.03)
    # coordinates: wrapped, displaced by sigma_t eps (mod 1), and uniform at sigma_max
    frac0 = torch.full((n, 3), 0.95, dtype=torch.float64)
    eps = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    frac_t, score = diffusion.noise_frac(frac0, torch.full((n,), 5), eps)
    assert bool(((frac_t >= 0) & (frac_t < 1)).all())
    d = frac_t - frac0
    d = d - torch.round(d)
    assert d.std().item() == pytest.approx(diffusion.sigma[5].item(), rel=0.03)
    torch.testing.assert_close(score, wrapped_normal_score(d, diffusion.sigma[5].item()), rtol=1e-6, atol=1e-6)
    frac_T, _ = diffusion.noise_frac(frac0, torch.full((n,), 50), eps)
    hist = torch.histc(frac_T.flatten(), bins=10, min=0, max=1) / frac_T.numel()
    assert torch.allclose(hist, torch.full_like(hist, 0.1), atol=0.01)
    assert wrap(torch.tensor([-1e-20, 1.0, 2.25])).tolist() == [0.0, 0.0, 0.25]


@pytest.fixture(scope="module")
def batch(shared_data):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = pd.read_csv(shared_data / "perov_5" / "val.csv.gz", nrows=4)
        crystals = [validate(from_pymatgen(Structure.from_str(c, fmt="cif"))) for c in rows["cif"]]
    return collate_crystals(crystals)


def test_loss_backprops_and_state_dict(batch):
    torch.manual_seed(0)
    model = CrysDiffDenoiser(DenoiserConfig(hidden_dim=32, num_layers=2, num_frequencies=8, time_dim=16))
    diffusion = JointDiffusion(DiffusionConfig(timesteps=100))
    out = diffusion.loss(model, batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_lattice", "loss_coords"}
    assert all(math.isfinite(v.item()) for v in out.values())
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    # deterministic for a seeded generator
    again = diffusion.loss(model, batch, generator=torch.Generator().manual_seed(0))
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    # the zero predictor scores ~1 on each term (the targets have unit scale)
    zero = lambda b, f, l, t: {"eps_lattice": torch.zeros_like(l), "score_frac": torch.zeros_like(f)}  # noqa: E731
    losses = [diffusion.loss(zero, batch, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert sum(x["loss_lattice"].item() for x in losses) / 40 == pytest.approx(1.0, abs=0.25)
    assert sum(x["loss_coords"].item() for x in losses) / 40 == pytest.approx(1.0, abs=0.3)
    # the constants travel in the state dict and round-trip
    state = diffusion.state_dict()
    assert {"lambda_t", "sigma", "alpha_bar"} <= set(state)
    other = JointDiffusion(DiffusionConfig(timesteps=100))
    other.load_state_dict(state)
    torch.testing.assert_close(other.lambda_t, diffusion.lambda_t)
    assert list(diffusion.parameters()) == []
