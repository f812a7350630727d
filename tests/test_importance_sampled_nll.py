"""The importance-sampled likelihood against a model whose likelihood is exact: a linear-Gaussian
latent model, p(z) = N(0, I), p(x | z) = N(Wz + b, σ²I), so p(x) = N(b, WWᵀ + σ²I). W has
orthogonal columns, so the exact posterior is a diagonal Gaussian, which q can equal. In float64."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import float64

from jvision.metrics import importance_sampled_nll
from jvision.ops import distributions

LATENT, PIXELS, NOISE_VARIANCE = 3, 6, 0.3


class LinearGaussian(nnx.Module):
    """The generative model and a diagonal-Gaussian q(z | x) = N(Ax + c, diag(s²))."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.normal(size=(PIXELS, LATENT)))
        self.weights = basis * np.array([2.0, 1.0, 0.5])  # [D, d], orthogonal columns.
        self.bias = rng.normal(size=PIXELS)
        # The exact posterior: covariance (I + WᵀW/σ²)⁻¹ (diagonal here), mean Σ Wᵀ(x − b)/σ².
        covariance = np.linalg.inv(np.eye(LATENT) + self.weights.T @ self.weights / NOISE_VARIANCE)
        self.q_matrix = nnx.Variable(jnp.asarray(covariance @ self.weights.T / NOISE_VARIANCE))
        self.q_offset = nnx.Variable(jnp.asarray(-self.q_matrix[...] @ self.bias))
        self.q_logvar = nnx.Variable(jnp.asarray(np.log(np.diag(covariance))))

    def exact_nll(self, x: np.ndarray) -> np.ndarray:
        covariance = self.weights @ self.weights.T + NOISE_VARIANCE * np.eye(PIXELS)
        centred = x - self.bias
        _, log_det = np.linalg.slogdet(covariance)
        quadratic = np.einsum("bi,ij,bj->b", centred, np.linalg.inv(covariance), centred)
        return 0.5 * (PIXELS * np.log(2 * np.pi) + log_det + quadratic)


def log_importance_weights(model: LinearGaussian, batch, key, step, num_samples):
    del step
    x = batch["image"]  # [B, D]
    mean = x @ model.q_matrix[...].T + model.q_offset[...]
    logvar = jnp.broadcast_to(model.q_logvar[...], mean.shape)
    z = distributions.reparameterized_sample(
        key, jnp.broadcast_to(mean, (num_samples, *mean.shape)), logvar
    )
    decoded = z @ jnp.asarray(model.weights.T) + model.bias
    log_noise = jnp.log(NOISE_VARIANCE)
    log_likelihood = distributions.gaussian_log_density(x, decoded, log_noise)
    log_prior = distributions.gaussian_log_density(z, 0.0, 0.0)
    return (log_likelihood + log_prior - distributions.gaussian_log_density(z, mean, logvar)).T


class Family:
    log_importance_weights = staticmethod(log_importance_weights)


def _data(model: LinearGaussian, count: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    z = rng.normal(size=(count, LATENT))
    return (
        z @ model.weights.T
        + model.bias
        + np.sqrt(NOISE_VARIANCE) * rng.normal(size=(count, PIXELS))
    )


def _nll(model, x, num_samples: int, samples_per_pass: int, seed: int = 0) -> np.ndarray:
    fn = jax.jit(
        lambda x, key: importance_sampled_nll.nll_per_example(
            Family, model, {"image": x}, key, 0, num_samples, samples_per_pass
        )
    )
    return np.asarray(fn(jnp.asarray(x), jax.random.key(seed)))


def test_with_the_exact_posterior_every_sample_gives_the_exact_likelihood():
    with float64():
        model = LinearGaussian(0)
        x = _data(model, 16)
        np.testing.assert_allclose(_nll(model, x, 1, 1), model.exact_nll(x), rtol=1e-12)
        np.testing.assert_allclose(_nll(model, x, 12, 4), model.exact_nll(x), rtol=1e-12)


def test_with_a_worse_posterior_it_lies_between_the_likelihood_and_the_elbo():
    """E[nll_K] falls with K from the negative ELBO (K = 1) to −log p(x) (K → ∞); at K = 5000 it
    is within 5 standard errors of the exact value (the error estimated from the weights: the
    relative spread of the weights over √K, per image, over √(images) for the mean)."""
    with float64():
        model = LinearGaussian(1)
        model.q_offset[...] = model.q_offset[...] + 0.4  # Off the posterior, but overlapping.
        model.q_logvar[...] = model.q_logvar[...] + 0.5
        x = _data(model, 64)
        exact = model.exact_nll(x).mean()
        nelbo = _nll(model, np.repeat(x, 200, axis=0), 1, 1).mean()  # K = 1, 200 samples each.
        estimates = {k: _nll(model, x, k, min(k, 100)).mean() for k in (10, 5000)}
        weights = np.asarray(
            log_importance_weights(model, {"image": x}, jax.random.key(9), 0, 5000)
        )
    weights = np.exp(weights - weights.max(axis=1, keepdims=True))
    standard_error = (weights.std(axis=1) / weights.mean(axis=1)).mean() / np.sqrt(5000 * len(x))
    assert nelbo - exact > 1.0  # q is far enough off for the test to mean something.
    assert exact < estimates[10] < nelbo
    assert abs(estimates[5000] - exact) < 5 * standard_error < 0.01 * (nelbo - exact)


def test_passes_combine_every_sample():
    """Samples drawn in P passes (one key each) combine as if drawn at once."""
    with float64():
        model = LinearGaussian(2)
        model.q_offset[...] = model.q_offset[...] + 0.3
        batch = {"image": jnp.asarray(_data(model, 8))}
        key = jax.random.key(3)
        by_pass = [log_importance_weights(model, batch, k, 0, 4) for k in jax.random.split(key, 3)]
        expected = -distributions.log_mean_exp(jnp.concatenate(by_pass, axis=1), axis=1)
        got = importance_sampled_nll.nll_per_example(Family, model, batch, key, 0, 12, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_log_mean_exp_is_stable():
    values = jnp.array([[-1000.0, -1000.0], [1000.0, 1000.0 + np.log(3.0)]])
    np.testing.assert_allclose(
        distributions.log_mean_exp(values), [-1000.0, 1000.0 + np.log(2.0)], rtol=1e-6
    )
