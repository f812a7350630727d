"""Likelihoods and KL terms of the variational models, per example, in nats."""

import jax
import jax.numpy as jnp


def _sum_per_example(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1).sum(axis=-1)


def bernoulli_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log p(targets | logits) of independent Bernoullis, summed per example.

    Args:
      logits: [B, ...] log-odds of each pixel being 1.
      targets: [B, ...] values in [0, 1] (binary for a proper likelihood).
    Returns:
      [B] nats.
    """
    # -[t log σ(l) + (1 - t) log(1 - σ(l))] = softplus(l) - t·l, stable for any l.
    return _sum_per_example(jax.nn.softplus(logits) - targets * logits)


def gaussian_kl_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) of diagonal Gaussians, summed per example.

    Args:
      mean, logvar: [B, ...].
    Returns:
      [B] nats.
    """
    return _sum_per_example(0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar))


def reparameterized_sample(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = mean + σ·ε with ε ~ N(0, I): a sample differentiable in mean and logvar."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
