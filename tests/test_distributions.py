"""Likelihood and KL terms against NumPy written from their textbook definitions.

Closed forms are compared in float64 on both sides (`helpers.float64`; u = 2⁻⁵³ ≈ 1.1e-16), so
that the bounds follow from float64 rounding and not from one CPU's float32 kernels; Monte Carlo
estimates are bounded by 5 standard errors of their own samples.
"""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import float64

from jvision.ops import distributions


def test_bernoulli_nll_matches_log_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4, 1)) * 4
    targets = (rng.random((3, 5, 4, 1)) < 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    not_p = 1 / (1 + np.exp(logits))  # 1 - p, without the cancellation of 1 - p near p = 1.
    expected = -(targets * np.log(p) + (1 - targets) * np.log(not_p)).reshape(3, -1).sum(1)
    with float64():
        got = np.asarray(distributions.bernoulli_nll(jnp.asarray(logits), jnp.asarray(targets)))
    # Each pixel's term is within a few u·(1 + |logit|) on both sides (|logit| ≤ 10 here; the
    # stable form softplus(l) - t·l loses at most u·|l| to cancellation), and the 20 terms' sum
    # rounds by ≤ 20·u·(its ≤ 41 nats): ≤ (20·3·11 + 20·41)·u ≈ 2e-13 nats, ≤ 1e-14 of each
    # image's ≥ 25 nats. RTOL = 1e-12 leaves 100×; a missing term or a swapped target moves an
    # image's sum by ≥ |logit| ≥ 0.017 nats.
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bernoulli_nll_is_finite_for_extreme_logits():
    logits = jnp.array([[-200.0, 200.0]])
    assert np.isfinite(distributions.bernoulli_nll(logits, jnp.array([[1.0, 0.0]]))).all()
    # The exact value is 2·e⁻²⁰⁰ ≈ 3e-87, which float32 rounds to 0: a stable implementation
    # gives 0 (or a subnormal), an unstable one inf, NaN, or a cancellation error of at least a
    # float32 ulp at 200 (2⁻¹⁶ ≈ 1.5e-5). ATOL = 1e-6 is below that ulp.
    np.testing.assert_allclose(
        distributions.bernoulli_nll(logits, jnp.array([[0.0, 1.0]])), [0.0], atol=1e-6
    )


def test_gaussian_kl_matches_closed_form_and_monte_carlo():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(4, 3))
    sigma = np.exp(rng.normal(size=(4, 3)) * 0.5)
    # KL(N(m, s²) || N(0, 1)) = log(1/s) + (s² + m²)/2 - 1/2 per dimension.
    expected = (np.log(1 / sigma) + (sigma**2 + mean**2) / 2 - 0.5).sum(1)
    with float64():
        got = np.asarray(
            distributions.gaussian_kl_standard_normal(
                jnp.asarray(mean), jnp.asarray(2 * np.log(sigma))
            )
        )
    # Each side rounds a few times per term and sums 4·3 terms, whose magnitudes add up to ≤ 7×
    # the KL here: ≤ 2·(12 + 3)·u·7 ≈ 2.5e-14 relative, RTOL = 1e-12. A missing ½ or term moves
    # the KL by O(1) of itself.
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # Monte Carlo: E_q[log q(z) - log p(z)] from n samples, within 5 standard errors (σ̂/√n, σ̂
    # the samples' standard deviation; ≈ 1.7% of the KL at n = 200,000).
    z = mean[0] + sigma[0] * rng.normal(size=(200_000, 3))
    log_q = -0.5 * (((z - mean[0]) / sigma[0]) ** 2) - np.log(sigma[0])
    log_p = -0.5 * z**2
    log_ratio = (log_q - log_p).sum(1)
    standard_error = log_ratio.std() / np.sqrt(len(log_ratio))
    assert abs(log_ratio.mean() - expected[0]) <= 5 * standard_error < 0.02 * expected[0]


def test_kl_is_zero_at_the_prior():
    zeros = jnp.zeros((2, 7))
    np.testing.assert_allclose(distributions.gaussian_kl_standard_normal(zeros, zeros), 0.0)


def test_reparameterized_sample_moments_and_gradient():
    key, n, mean, sigma = jax.random.key(0), 100_000, 2.0, 0.5
    means, logvar = jnp.full((n, 1), mean), jnp.full((n, 1), np.log(sigma**2))
    z = distributions.reparameterized_sample(key, means, logvar)
    # Monte Carlo, n samples of N(2, 0.5²) (float32, the dtype of training; the moments are taken
    # in float64 so that summation rounding plays no part): the sample mean has a standard error
    # σ/√n = 1.6e-3, the sample standard deviation σ/√(2n) = 1.1e-3. Bound: 5 standard errors.
    samples = np.asarray(z, np.float64)
    assert abs(samples.mean() - mean) <= 5 * sigma / np.sqrt(n)
    assert abs(samples.std() - sigma) <= 5 * sigma / np.sqrt(2 * n)
    grad = jax.grad(lambda m: distributions.reparameterized_sample(key, m, logvar).sum())(means)
    np.testing.assert_allclose(grad, 1.0)  # d(m + σ·ε)/dm = 1 exactly.
