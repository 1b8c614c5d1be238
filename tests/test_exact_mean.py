"""The affine chain's exact mean (``exact_mean``): closed form, equal to the chain's expectation, no sampling floor."""

import pytest
import torch
from test_finetune_model import ToyEncoder, toy_batch

from crysdiff.card import PropertyDiffusion, PropertyDiffusionConfig
from crysdiff.config import to_dict
from crysdiff.denoiser import DenoiserConfig
from crysdiff.heads import CardNoiseHead, HeadConfig
from crysdiff.property_model import PropertyModel
from crysdiff.restore import FinetuneConfig, build_property_model, stored_finetune_config
from crysdiff.uncertainty import clipped_gaussian_mean

SMALL = PropertyDiffusionConfig(timesteps=50)
SMALL_ENCODER = DenoiserConfig(hidden_dim=16, num_layers=1)


def random_card_head(seed: int = 0) -> CardNoiseHead:
    """A CARD head whose output layer is random (a trained-looking chain, not the prior's ``N(mu, 1)``)."""
    torch.manual_seed(seed)
    head = CardNoiseHead(8, HeadConfig(kind="card", prior="mean", hidden_dim=16)).double()
    torch.nn.init.normal_(head.out.weight, std=0.2)
    torch.nn.init.normal_(head.out.bias, std=0.2)
    return head.eval()


def test_closed_form_is_the_monte_carlo_mean_and_the_expectation_recursion():
    diffusion = PropertyDiffusion(SMALL)
    head = random_card_head()
    features = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu = torch.tensor([-0.5, 0.0, 0.3, 1.0], dtype=torch.float64)
    with torch.no_grad():
        coeffs = head.chain_coefficients(features, diffusion.timesteps, diffusion.alpha_bar)
        mean, var = diffusion.affine_moments(coeffs, mu)
        # Monte Carlo: within 4 standard errors of the mean of 40,000 chains
        draws = diffusion.sample_affine(coeffs, mu, 40_000, generator=torch.Generator().manual_seed(2))
        assert (var > 0.01).all() and ((mean - mu).abs() > 0.05).any()  # a chain that moves and spreads
        assert ((draws.mean(1) - mean).abs() <= 4 * (var / draws.shape[1]).sqrt()).all()
        # the expectation carried step by step through the general chain's own functions (the head's
        # forward, Alg. 3's y0_hat and Eq. 6's posterior mean): each step is affine, so E commutes with it
        expected = mu.clone()
        for t in range(diffusion.timesteps, 0, -1):
            t_vec = torch.full((4,), t)
            y0_hat = diffusion.predict_y0(expected, mu, t_vec, head(features, expected, mu, t_vec, diffusion.alpha_bar))
            expected = y0_hat if t == 1 else diffusion.posterior(y0_hat, expected, mu, t_vec)[0]
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-12)


def test_end_point_draws_have_the_chains_law():
    """Models with ``exact_mean`` draw from ``N(m, v)`` in one step: the same law as the T-step chain
    (moments and quantiles to Monte Carlo error), not the same draws."""
    diffusion = PropertyDiffusion(SMALL)
    head = random_card_head(3)
    features = torch.randn(3, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mu = torch.tensor([-0.2, 0.4, 1.5], dtype=torch.float64)
    with torch.no_grad():
        coeffs = head.chain_coefficients(features, diffusion.timesteps, diffusion.alpha_bar)
        A, C, s = diffusion._affine_step_tables(coeffs, mu)
        mean, var = mu.clone(), torch.ones_like(mu)  # the recursion the closed form unrolls
        for t in range(diffusion.timesteps, 0, -1):
            mean, var = A[:, t] * mean + C[:, t], A[:, t] ** 2 * var + s[:, t] ** 2
        draws, exact_mean, exact_var = diffusion.sample_affine_endpoint(coeffs, mu, 50_000,
                                                                        generator=torch.Generator().manual_seed(6))
        chain = diffusion.sample_affine(coeffs, mu, 50_000, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(exact_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exact_var, var, rtol=1e-12, atol=1e-12)
    assert draws.shape == chain.shape == (3, 50_000) and not torch.equal(draws, chain)
    # both match the Gaussian N(m, v) at five quantiles, each to 4.5 of its standard errors
    levels = torch.tensor([0.025, 0.25, 0.5, 0.75, 0.975], dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    z = normal.icdf(levels)  # [5]
    standard_error = (levels * (1 - levels) / 50_000).sqrt() / normal.log_prob(z).exp()  # [5], in units of sqrt(v)
    expected = mean[None, :] + var.sqrt()[None, :] * z[:, None]  # [5, B]
    for sample in (draws, chain):
        gap = (torch.quantile(sample, levels, dim=1) - expected).abs() / var.sqrt()[None, :]
        assert (gap <= 4.5 * standard_error[:, None]).all(), gap / standard_error[:, None]
        assert ((sample.mean(1) - mean).abs() <= 4 * (var / 50_000).sqrt()).all()
        torch.testing.assert_close(sample.var(1), var, rtol=0.03, atol=0)


def test_clipped_gaussian_mean():
    mean = torch.tensor([-1.0, 0.0, 0.2, 3.0, -0.5], dtype=torch.float64)
    std = torch.tensor([0.5, 1.0, 0.3, 0.1, 0.0], dtype=torch.float64)
    draws = mean[:, None] + std[:, None] * torch.randn(5, 200_000, generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.float64)
    exact = clipped_gaussian_mean(mean, std, 0.0)
    torch.testing.assert_close(exact, draws.clamp_min(0.0).mean(1), atol=4e-3, rtol=0)
    assert float(exact[-1]) == 0.0 and torch.equal(clipped_gaussian_mean(mean, std, None), mean)


def model(exact_mean: bool, lower_bound=None, kind="gaussian") -> PropertyModel:
    torch.manual_seed(0)
    return PropertyModel(ToyEncoder(), 32, HeadConfig(kind=kind, hidden_dim=16), mean=0.1, std=1.0,
                         lower_bound=lower_bound, exact_mean=exact_mean).eval()


@pytest.mark.parametrize("kind", ["gaussian", "card", "eq4"])
def test_opted_in_model_has_no_sampling_floor(kind):
    """Two seeds: the same mean to the last bit; the spread still comes from (different) samples."""
    diffusion = PropertyDiffusion(SMALL)
    batch, _, _, _ = toy_batch(6, torch.Generator().manual_seed(0))
    network = model(True, lower_bound=0.0, kind=kind)
    first, second = (network.predict(batch, diffusion, num_samples=20, generator=torch.Generator().manual_seed(s),
                                     keep_samples=True) for s in (0, 1))
    assert torch.equal(first["mean"], second["mean"])
    assert not torch.equal(first["std"], second["std"])
    torch.testing.assert_close(first["std"], first["samples"].std(1))
    assert not torch.equal(first["mean"], first["samples"].mean(1))
    # the exact mean is the mean of infinitely many clipped samples
    many = network.predict(batch, diffusion, num_samples=20_000, generator=torch.Generator().manual_seed(2),
                           keep_samples=True)
    assert ((many["samples"].mean(1) - first["mean"]).abs() <= 4 * many["std"] / 20_000 ** 0.5 + 1e-9).all()


def test_interval_scale_moves_samples_about_the_exact_mean():
    diffusion = PropertyDiffusion(SMALL)
    batch, _, _, _ = toy_batch(6, torch.Generator().manual_seed(0))
    network = model(True)
    raw = network.predict(batch, diffusion, num_samples=20, generator=torch.Generator().manual_seed(0))
    network.calibrate(interval_scale=2.0)
    wide = network.predict(batch, diffusion, num_samples=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(wide["mean"], raw["mean"])
    torch.testing.assert_close(wide["p97.5"], raw["mean"] + 2 * (raw["p97.5"] - raw["mean"]))


def test_old_checkpoints_keep_the_samples_mean():
    """A config without the field (every checkpoint written before it) is off; new fine-tunings are on."""
    assert FinetuneConfig().exact_mean and to_dict(FinetuneConfig())["exact_mean"] is True
    assert stored_finetune_config(to_dict(FinetuneConfig()), current=True).exact_mean
    old = stored_finetune_config({"target": "band_gap", "head": {"kind": "gaussian", "prior": "learned"}}, current=True)
    assert not old.exact_mean
    assert not build_property_model(FinetuneConfig(model=SMALL_ENCODER, exact_mean=False)).exact_mean
    diffusion = PropertyDiffusion(SMALL)
    batch, _, _, _ = toy_batch(6, torch.Generator().manual_seed(0))
    out = model(False, lower_bound=0.0).predict(batch, diffusion, num_samples=20,
                                                generator=torch.Generator().manual_seed(0), keep_samples=True)
    assert torch.equal(out["mean"], out["samples"].mean(1))
