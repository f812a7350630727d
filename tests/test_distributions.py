"""Likelihood and KL terms against NumPy written from their textbook definitions."""

import jax
import jax.numpy as jnp
import numpy as np

from jvision.ops import distributions


def test_bernoulli_nll_matches_log_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4, 1)) * 4
    targets = (rng.random((3, 5, 4, 1)) < 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).reshape(3, -1).sum(1)
    got = distributions.bernoulli_nll(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bernoulli_nll_is_finite_for_extreme_logits():
    logits = jnp.array([[-200.0, 200.0]])
    assert np.isfinite(distributions.bernoulli_nll(logits, jnp.array([[1.0, 0.0]]))).all()
    np.testing.assert_allclose(
        distributions.bernoulli_nll(logits, jnp.array([[0.0, 1.0]])), [0.0], atol=1e-6
    )


def test_gaussian_kl_matches_closed_form_and_monte_carlo():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(4, 3))
    sigma = np.exp(rng.normal(size=(4, 3)) * 0.5)
    # KL(N(m, s²) || N(0, 1)) = log(1/s) + (s² + m²)/2 - 1/2 per dimension.
    expected = (np.log(1 / sigma) + (sigma**2 + mean**2) / 2 - 0.5).sum(1)
    got = distributions.gaussian_kl_standard_normal(
        jnp.asarray(mean, jnp.float32), jnp.asarray(2 * np.log(sigma), jnp.float32)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Monte Carlo: E_q[log q(z) - log p(z)].
    z = mean[0] + sigma[0] * rng.normal(size=(200_000, 3))
    log_q = -0.5 * (((z - mean[0]) / sigma[0]) ** 2) - np.log(sigma[0])
    log_p = -0.5 * z**2
    np.testing.assert_allclose((log_q - log_p).sum(1).mean(), expected[0], rtol=2e-2)


def test_kl_is_zero_at_the_prior():
    zeros = jnp.zeros((2, 7))
    np.testing.assert_allclose(distributions.gaussian_kl_standard_normal(zeros, zeros), 0.0)


def test_reparameterized_sample_moments_and_gradient():
    key = jax.random.key(0)
    mean, logvar = jnp.full((100_000, 1), 2.0), jnp.full((100_000, 1), np.log(0.25))
    z = distributions.reparameterized_sample(key, mean, logvar)
    np.testing.assert_allclose(z.mean(), 2.0, atol=0.01)
    np.testing.assert_allclose(z.std(), 0.5, atol=0.01)
    grad = jax.grad(lambda m: distributions.reparameterized_sample(key, m, logvar).sum())(mean)
    np.testing.assert_allclose(grad, 1.0)
