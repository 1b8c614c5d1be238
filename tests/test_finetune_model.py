"""PropertyModel (Alg. 2 training, Alg. 3 inference) on a synthetic target with a known noise level.

The encoder here is a stand-in (an embedding of the atomic numbers), so the test isolates the
property diffusion: the learned predictive distribution must match the data's own.
"""

from types import SimpleNamespace

import pytest
import torch
from conftest import HeadWithoutCoefficients

from crysdiff.card import PropertyDiffusion, PropertyDiffusionConfig
from crysdiff.finetune import PropertyModel, pool_mean
from crysdiff.heads import GaussianNoiseHead, HeadConfig


class ToyEncoder(torch.nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.embed = torch.nn.Embedding(20, hidden)

    def forward(self, batch, frac_coords, lattice, t):
        return self.embed(batch.atomic_numbers)  # [N, H]


def toy_batch(n_crystals, generator):
    num_atoms = torch.randint(1, 5, (n_crystals,), generator=generator)
    z = torch.randint(1, 6, (int(num_atoms.sum()),), generator=generator)
    batch_index = torch.repeat_interleave(torch.arange(n_crystals), num_atoms)
    # target: mean per-element value, noise std 0.1 * (1 + Z-dependent term) -> heteroscedastic
    values = torch.tensor([0.0, -2.0, -1.0, 0.0, 1.0, 2.0])
    mean = pool_mean(values[z][:, None], batch_index, n_crystals)[:, 0]
    scale = 0.1 + 0.2 * (pool_mean((z == 5).float()[:, None], batch_index, n_crystals)[:, 0] > 0).float()
    y = 3.0 + 2.0 * mean + scale * torch.randn(n_crystals, generator=generator)
    batch = SimpleNamespace(atomic_numbers=z, batch=batch_index, num_atoms=num_atoms,
                            frac_coords=torch.zeros(len(z), 3), lattice=torch.eye(3).repeat(n_crystals, 1, 1))
    return batch, y, 3.0 + 2.0 * mean, scale


def train(model, diffusion, steps=1200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch, y, _, _ = toy_batch(256, generator)
        loss = model.loss(batch, y, diffusion, generator=generator)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


@pytest.mark.parametrize("kind, prior", [("card", "mean"), ("card", "learned"), ("gaussian", "mean"), ("gaussian", "learned")])
def test_card_head_learns_mean_and_calibrated_spread(kind, prior):
    torch.manual_seed(0)
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=100))
    model = PropertyModel(ToyEncoder(), 32, HeadConfig(kind=kind, prior=prior, hidden_dim=64), mean=3.0, std=2.0)
    # the learned prior f(x) trains jointly with the head and needs longer: at 1200 steps its mean
    # error (0.06) still widens the residuals beyond the learned spread (coverage 0.88 -> 0.93 at 2000)
    train(model, diffusion, steps=2000 if prior == "learned" else 1200)
    batch, y, true_mean, true_scale = toy_batch(2000, torch.Generator().manual_seed(99))
    out = model.predict(batch, diffusion, num_samples=200, generator=torch.Generator().manual_seed(1))
    assert torch.all(out["p2.5"] <= out["mean"]) and torch.all(out["mean"] <= out["p97.5"])
    # the prediction tracks the noiseless target far better than the noise level
    assert (out["mean"] - true_mean).abs().mean() < 0.1
    # the predicted spread follows the heteroscedastic noise (0.1 vs 0.3)
    noisy = true_scale > 0.2
    assert out["std"][noisy].mean() > 1.6 * out["std"][~noisy].mean()
    coverage = ((y >= out["p2.5"]) & (y <= out["p97.5"])).double().mean()
    assert 0.88 <= coverage <= 0.99, coverage


@pytest.mark.parametrize("kind", ["card", "gaussian"])
def test_generic_chain_matches_affine_chain_statistics(kind):
    """A head without chain coefficients runs the generic chain: same distribution as the affine path."""
    torch.manual_seed(0)
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=50))
    model = PropertyModel(ToyEncoder(), 32, HeadConfig(kind=kind, hidden_dim=32))
    with torch.no_grad():
        last = model.head.out if kind == "card" else model.head.net[-1]
        last.bias.copy_(torch.tensor([0.1, -0.3, 0.2] if kind == "card" else [0.4, -1.0]))
    batch, _, _, _ = toy_batch(4, torch.Generator().manual_seed(3))
    fast = model.predict(batch, diffusion, num_samples=4000, generator=torch.Generator().manual_seed(0))
    model.head = HeadWithoutCoefficients(model.head)
    slow = model.predict(batch, diffusion, num_samples=4000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fast["mean"], slow["mean"], atol=0.05)
    assert torch.allclose(fast["std"], slow["std"], rtol=0.1)


@pytest.mark.parametrize("kind", ["card", "gaussian"])
def test_untrained_head_samples_the_prior(kind):
    """Before any training the chain returns the prior N(mean, std²) in original units (the card
    head's prior baseline, the Gaussian head's s = 1 start), not an amplified y_T."""
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=1000))
    model = PropertyModel(ToyEncoder(), 32, HeadConfig(kind=kind, prior="mean", hidden_dim=16), mean=3.0, std=2.0)
    if kind == "gaussian":  # its m starts near, not at, zero: pin it to isolate the chain
        torch.nn.init.zeros_(model.head.net[-1].weight)
        torch.nn.init.zeros_(model.head.net[-1].bias)
    batch, _, _, _ = toy_batch(6, torch.Generator().manual_seed(0))
    out = model.predict(batch, diffusion, num_samples=4000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out["mean"], torch.full((6,), 3.0, dtype=out["mean"].dtype), atol=0.15)
    assert torch.allclose(out["std"], torch.full((6,), 2.0, dtype=out["std"].dtype), rtol=0.06)


def test_checkpoint_configs_are_migrated_or_refused_with_the_dropped_option_named():
    from crysdiff.restore import stored_finetune_config

    new = stored_finetune_config({"target": "band_gap", "head": {"kind": "card", "baseline": "prior", "composition": False,
                                                                 "hidden_dim": 64}})
    assert new.head.kind == "card" and new.head.hidden_dim == 64
    assert stored_finetune_config({"target": "x", "head": {"kind": "card"}}, current=True).head.kind == "card"
    regression = stored_finetune_config({"target": "x", "head": {"kind": "regression", "prior": "learned",
                                                                 "baseline": "prior"}})
    assert regression.head.prior == "mean"  # the prior was never used by a regression head
    refused = {"head.baseline=zero": {"kind": "card"},  # written before the field existed
               "head.composition=true": {"baseline": "prior", "composition": True},
               "head.layers=all": {"baseline": "prior", "layers": "all"},
               "head.kind=card_mlp": {"kind": "card_mlp", "baseline": "prior"}}
    for option, head in refused.items():
        with pytest.raises(ValueError, match=option.replace(".", "[.]")):
            stored_finetune_config({"target": "band_gap", "head": head})
    with pytest.raises(ValueError, match="head.kind"):
        HeadConfig(kind="card_mlp")
    with pytest.raises(ValueError, match="head.prior=mean"):
        HeadConfig(kind="regression")  # the default prior is learned: a regression head must say mean
    with pytest.raises(TypeError):
        HeadConfig(baseline="zero")


def test_interval_scale_and_lower_bound_are_model_state():
    """Both travel with the weights (state_dict) and come back on load; a fresh model has neither set."""
    model = PropertyModel(ToyEncoder(), 32, HeadConfig(hidden_dim=16), lower_bound=0.0, interval_scale=1.5)
    state = model.state_dict()
    assert float(state["y_interval_scale"]) == 1.5 and float(state["y_lower_bound"]) == 0.0
    fresh = PropertyModel(ToyEncoder(), 32, HeadConfig(hidden_dim=16))
    assert fresh.lower_bound is None and fresh.interval_scale == 1.0
    fresh.load_state_dict(state)
    assert fresh.lower_bound == 0.0 and fresh.interval_scale == 1.5
    fresh.calibrate(interval_scale=2.0, lower_bound=None)
    assert fresh.lower_bound is None and fresh.interval_scale == 2.0


@pytest.mark.parametrize("relative", [False, True])
def test_gaussian_head_is_the_exact_noise_posterior_of_a_gaussian_target(relative):
    """For y_0 ~ N(m, s²) (or N(mu + m, s²), the residual form), E[eps | y_t] is affine in y_t; its
    slope and intercept, fitted by least squares on sampled (y_t, eps) pairs, match the head's
    closed-form coefficients at every step tried."""
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=1000))
    generator = torch.Generator().manual_seed(0)
    m, s, mu = 0.7, 0.3, -0.4
    for t in (1, 50, 300, 700, 1000):
        ab = diffusion.alpha_bar[t]
        y0 = m + (mu if relative else 0.0) + s * torch.randn(400_000, generator=generator, dtype=torch.float64)
        eps = torch.randn(400_000, generator=generator, dtype=torch.float64)
        y_t = ab.sqrt() * y0 + (1 - ab.sqrt()) * mu + (1 - ab).sqrt() * eps
        design = torch.stack([torch.ones_like(y_t), y_t], dim=1)
        intercept, slope = torch.linalg.lstsq(design, eps[:, None]).solution[:, 0]
        a, b, c = GaussianNoiseHead.noise_coefficients(torch.tensor(m, dtype=torch.float64),
                                                       torch.tensor(s, dtype=torch.float64), ab, relative)
        assert slope == pytest.approx(float(b), rel=0.02, abs=0.01), t
        assert intercept == pytest.approx(float(a + c * mu), rel=0.02, abs=0.01), t


def test_gaussian_head_chain_returns_its_mean_and_spread():
    """The reverse chain run with the head's coefficients ends (exact moments of the linear-Gaussian
    chain) at the head's own N(mu + m, s²), to the discretisation error of T = 1000 steps."""
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=1000))
    head = GaussianNoiseHead(8, HeadConfig(kind="gaussian", hidden_dim=16))
    features = torch.randn(5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    head = head.double()
    with torch.no_grad():
        m, s = head.moments(features)
        coeffs = head.chain_coefficients(features, diffusion.timesteps, alpha_bar=diffusion.alpha_bar)
    mu = torch.linspace(-1.0, 1.5, 5, dtype=torch.float64)  # a learned prior's f(x), one per crystal
    mean, var = diffusion.affine_moments(coeffs, mu)
    assert torch.allclose(mean, m + mu, atol=0.02)
    assert torch.allclose(var.sqrt(), s, rtol=0.05)


def test_regression_head_and_eq4_variant_run():
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=20))
    batch, y, _, _ = toy_batch(8, torch.Generator().manual_seed(0))
    for kind in ("regression", "eq4", "card", "gaussian"):
        head = HeadConfig(kind=kind, hidden_dim=16, prior="mean" if kind == "regression" else "learned")
        model = PropertyModel(ToyEncoder(), 32, head, mean=1.0, std=2.0)
        loss = model.loss(batch, y, diffusion)["loss"]
        loss.backward()
        assert torch.isfinite(loss)
        out = model.predict(batch, diffusion, num_samples=5)
        assert out["mean"].shape == (8,) and torch.isfinite(out["mean"]).all()


def test_lower_bound_clips_samples_and_intervals():
    """A non-negative target (band gap) never gets a negative prediction, spread or interval end."""
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=20))
    batch, _, _, _ = toy_batch(16, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    # mean 0.1, std 1: an untrained head puts about half of all samples below zero
    unbounded = PropertyModel(ToyEncoder(), 32, HeadConfig(hidden_dim=16), mean=0.1, std=1.0)
    bounded = PropertyModel(ToyEncoder(), 32, HeadConfig(hidden_dim=16), mean=0.1, std=1.0, lower_bound=0.0)
    bounded.load_state_dict({**unbounded.state_dict(), "y_lower_bound": bounded.y_lower_bound})  # the same weights
    raw = unbounded.predict(batch, diffusion, num_samples=200, generator=torch.Generator().manual_seed(1), keep_samples=True)
    clipped = bounded.predict(batch, diffusion, num_samples=200, generator=torch.Generator().manual_seed(1), keep_samples=True)
    assert (raw["samples"] < 0).float().mean() > 0.2
    assert torch.equal(clipped["samples"], raw["samples"].clamp_min(0.0))
    assert (clipped["p2.5"] >= 0).all() and (clipped["mean"] > raw["mean"]).all()


def test_conformal_scale_calibrates_too_narrow_intervals():
    """Intervals of N(mean, 1) for targets that scatter with std 2: the fitted scale is about 2, and
    the rescaled intervals cover about 95% of fresh crystals (split-conformal)."""
    import numpy as np

    from crysdiff.uncertainty import conformal_interval_scale

    rng = np.random.default_rng(0)

    def crystals(n):
        mean = rng.normal(size=n) * 3
        return mean + 2.0 * rng.normal(size=n), mean, mean - 1.96, mean + 1.96

    y, mean, low, high = crystals(2000)
    scale, info = conformal_interval_scale(y, mean, low, high)
    assert scale == pytest.approx(2.0, rel=0.08)
    assert info["coverage_before"] < 0.7 and 0.95 <= info["coverage_after"] <= 0.96
    y, mean, low, high = crystals(20000)
    covered = (y >= mean - scale * 1.96) & (y <= mean + scale * 1.96)
    assert 0.94 <= covered.mean() <= 0.96
    # too wide intervals are narrowed; a target at a clipping bound is covered once clipping reaches it
    scale, _ = conformal_interval_scale(y, mean, mean - 10, mean + 10)
    assert scale == pytest.approx(1.96 * 2 / 10, rel=0.05)
    scale, info = conformal_interval_scale(np.zeros(40), np.full(40, 0.5), np.zeros(40), np.ones(40))
    assert scale == pytest.approx(1.0) and info["coverage_before"] == 1.0


def test_scale_spread_moves_every_quantile_about_the_mean():
    from crysdiff.uncertainty import scale_spread, summarise

    samples = torch.randn(5, 4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    samples = samples.clamp_min(0.0)  # a non-negative target's clipped samples
    mean = samples.mean(dim=1)
    moved = summarise(scale_spread(samples, mean, 1.7, lower_bound=0.0))
    plain = summarise(samples)
    for key in ("p2.5", "p97.5"):
        torch.testing.assert_close(moved[key], (mean + 1.7 * (plain[key] - mean)).clamp_min(0.0))
    model = PropertyModel(ToyEncoder(), 32, HeadConfig(kind="gaussian", prior="mean", hidden_dim=16), mean=1.0, std=2.0)
    model.calibrate(interval_scale=3.0)
    diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=50))
    batch, _, _, _ = toy_batch(6, torch.Generator().manual_seed(0))
    wide = model.predict(batch, diffusion, num_samples=200, generator=torch.Generator().manual_seed(1))
    raw = model.predict(batch, diffusion, num_samples=200, generator=torch.Generator().manual_seed(1), interval_scale=1.0)
    torch.testing.assert_close(wide["mean"], raw["mean"])  # calibration changes the spread, not the prediction
    torch.testing.assert_close(wide["std"], 3.0 * raw["std"])
    torch.testing.assert_close(wide["p97.5"] - wide["mean"], 3.0 * (raw["p97.5"] - raw["mean"]))


