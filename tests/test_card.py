"""The CARD property diffusion: coefficients against direct Gaussian algebra, sampler against an oracle."""

import math

import pytest
import torch

from crysdiff.card import PropertyDiffusion, PropertyDiffusionConfig


@pytest.fixture(scope="module", params=["linear", "cosine"])
def process(request):
    return PropertyDiffusion(PropertyDiffusionConfig(timesteps=1000, beta_schedule=request.param))


def _direct_posterior(process, y0, y_t, mu, t):
    """Bayes on the one-step chain: y_{t-1} ~ N(a + b mu, 1 - ab_{t-1}) given y0 and
    y_t | y_{t-1} ~ N(sqrt(alpha_t) y_{t-1} + (1 - sqrt(alpha_t)) mu, beta_t)."""
    ab_prev = process.alpha_bar[t - 1]
    alpha, beta = process.alpha[t], process.beta[t]
    prior_mean = ab_prev.sqrt() * y0 + (1 - ab_prev.sqrt()) * mu
    prior_var = 1 - ab_prev
    # linear-Gaussian observation y_t = c y_{t-1} + d + noise(beta)
    c, d = alpha.sqrt(), (1 - alpha.sqrt()) * mu
    if prior_var == 0:  # t = 1: y_{t-1} = y0 exactly
        return prior_mean, torch.zeros(())
    gain = prior_var * c / (c * c * prior_var + beta)
    mean = prior_mean + gain * (y_t - c * prior_mean - d)
    var = prior_var - gain * c * prior_var
    return mean, var


@pytest.mark.parametrize("t", [1, 2, 10, 500, 999, 1000])
def test_posterior_coefficients_match_direct_gaussian_computation(process, t):
    g = torch.Generator().manual_seed(t)
    y0, y_t, mu = torch.randn(3, dtype=torch.float64, generator=g)
    mean, var = process.posterior(y0.view(1), y_t.view(1), mu.view(1), torch.tensor([t]))
    direct_mean, direct_var = _direct_posterior(process, y0, y_t, mu, t)
    assert mean.item() == pytest.approx(direct_mean.item(), abs=1e-10)
    assert var.item() == pytest.approx(direct_var.item(), abs=1e-12)


def test_forward_marginal_ends_at_prior(process):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    y0 = torch.full((n,), 3.0, dtype=torch.float64)
    mu = torch.full((n,), -1.0, dtype=torch.float64)
    t = torch.full((n,), process.timesteps, dtype=torch.long)
    y_T = process.add_noise(y0, mu, t, torch.randn(n, generator=g, dtype=torch.float64))
    ab_T = process.alpha_bar[-1]
    assert ab_T.sqrt() < 0.01  # the chain forgets y0: its end point is (almost exactly) N(mu, 1)
    expected_mean = ab_T.sqrt() * 3.0 + (1 - ab_T.sqrt()) * -1.0
    assert y_T.mean().item() == pytest.approx(expected_mean.item(), abs=0.01)
    assert y_T.std().item() == pytest.approx(1.0, abs=0.01)


def test_predict_y0_inverts_add_noise(process):
    g = torch.Generator().manual_seed(1)
    y0, mu, eps = torch.randn(3, 64, dtype=torch.float64, generator=g)
    t = torch.randint(1, process.timesteps + 1, (64,), generator=g)
    y_t = process.add_noise(y0, mu, t, eps)
    torch.testing.assert_close(process.predict_y0(y_t, mu, t, eps), y0)


def test_ancestral_sampler_with_oracle_noise_recovers_target_distribution(process):
    """If p(y0) = N(m, s^2), the optimal noise predictor is affine in y_t; the sampler must then
    reproduce N(m, s^2) whatever the prior mean mu."""
    m = torch.tensor([2.0, -0.5], dtype=torch.float64)
    s = torch.tensor([0.3, 1.5], dtype=torch.float64)
    mu = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def oracle(y_t, t):
        ab = process.alpha_bar[t]
        z = y_t - mu[:, None]
        var_z = ab * s[:, None] ** 2 + (1 - ab)
        return math.sqrt(1 - ab) / var_z * (z - ab.sqrt() * (m - mu)[:, None])

    samples = process.sample(oracle, mu, num_samples=20_000, generator=torch.Generator().manual_seed(2))
    assert samples.shape == (2, 20_000)
    torch.testing.assert_close(samples.mean(1), m, atol=0.05, rtol=0)
    torch.testing.assert_close(samples.std(1), s, atol=0.05, rtol=0.03)


def test_affine_chain_equals_generic_chain_and_exact_moments(process):
    """The precomputed-coefficient chain is the same Markov chain as calling the head each step."""
    from crysdiff.heads import CardNoiseHead, HeadConfig

    torch.manual_seed(0)
    head = CardNoiseHead(8, HeadConfig(hidden_dim=16, time_dim=16)).double()
    schedule = {"alpha_bar": process.alpha_bar}
    for p in head.parameters():  # random non-trivial weights (the output layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    z = torch.randn(3, 8, dtype=torch.float64)
    mu = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    coeffs = head.chain_coefficients(z, process.timesteps, **schedule)
    # same coefficients as the head's forward at a few steps
    for t in (1, 7, process.timesteps):
        y_t = torch.randn(3, dtype=torch.float64)
        tt = torch.full((3,), t)
        direct = head(z, y_t, mu, tt, **schedule)
        via_table = coeffs[:, t, 0] + coeffs[:, t, 1] * y_t + coeffs[:, t, 2] * mu
        torch.testing.assert_close(direct, via_table)
    # identical noise -> identical samples
    generic = process.sample(lambda y, t: head(z[:, None, :].expand(-1, y.shape[1], -1), y, mu[:, None].expand_as(y),
                                                torch.full_like(y, t, dtype=torch.long), **schedule),
                             mu, num_samples=5, generator=torch.Generator().manual_seed(3))
    fast = process.sample_affine(coeffs, mu, num_samples=5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fast, generic)
    mean, var = process.affine_moments(coeffs, mu)
    many = process.sample_affine(coeffs, mu, num_samples=20_000, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(many.mean(1), mean, atol=0.05 * var.sqrt().max().item() + 1e-3, rtol=0)
    torch.testing.assert_close(many.var(1), var, rtol=0.05, atol=1e-6)
