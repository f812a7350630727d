"""Likelihoods and KL terms of the variational models, per example, in nats."""

import jax
import jax.numpy as jnp


def _sum_per_example(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1).sum(axis=-1)


def bernoulli_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log p(targets | logits) of independent Bernoullis, summed per example.

    Args:
      logits: [B, ...] log-odds of each pixel being 1.
      targets: values in [0, 1] of the same shape (binary for a proper likelihood).
    Returns:
      [B] nats.
    """
    # Flat [B, D] first: XLA:CPU vectorizes elementwise ops along the last axis, and an image's
    # last axis may be one channel, which it would run element by element (docs/speed.md).
    logits = logits.reshape(logits.shape[0], -1)
    targets = targets.reshape(targets.shape[0], -1)
    # -[t log σ(l) + (1 - t) log(1 - σ(l))] = softplus(l) - t·l, stable for any l.
    return (jax.nn.softplus(logits) - targets * logits).sum(axis=-1)


def gaussian_kl_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) of diagonal Gaussians, summed per example.

    Args:
      mean, logvar: [B, ...].
    Returns:
      [B] nats.
    """
    return _sum_per_example(0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar))


def gaussian_log_density(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(x; mean, exp(logvar)) of a diagonal Gaussian, summed over the last axis.

    Args:
      x, mean, logvar: [..., D] (broadcastable).
    Returns:
      [...] nats.
    """
    log_2pi = jnp.log(2 * jnp.pi).astype(x.dtype)
    terms = -0.5 * (log_2pi + logvar + jnp.square(x - mean) * jnp.exp(-logvar))
    return terms.sum(axis=-1)


def log_mean_exp(log_values: jax.Array, axis: int = -1) -> jax.Array:
    """log((1/K) Σ_k exp(log_values_k)) over `axis` of length K, without overflow."""
    count = log_values.shape[axis]
    return jax.nn.logsumexp(log_values, axis=axis) - jnp.log(count).astype(log_values.dtype)


def reparameterized_sample(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = mean + σ·ε with ε ~ N(0, I): a sample differentiable in mean and logvar."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def relaxed_bernoulli_sample(key: jax.Array, logits: jax.Array, temperature) -> jax.Array:
    """A Concrete / relaxed Bernoulli sample in (0, 1), differentiable in `logits`.

    σ((logit u + logit p) / τ) with u ~ U(0, 1), and p and u clamped to [ε, 1 - ε] (float32 ε),
    as torch's RelaxedBernoulli.rsample. As τ → 0 samples approach Bernoulli(p) draws.
    """
    eps = jnp.finfo(logits.dtype).eps
    probs = jnp.clip(jax.nn.sigmoid(logits), eps, 1 - eps)
    uniform = jnp.clip(jax.random.uniform(key, logits.shape, logits.dtype), eps, 1 - eps)
    noise = jnp.log(uniform) - jnp.log1p(-uniform)
    return jax.nn.sigmoid((noise + jnp.log(probs) - jnp.log1p(-probs)) / temperature)


def bernoulli_kl(probs: jax.Array, prior: float) -> jax.Array:
    """KL(Bernoulli(probs) || Bernoulli(prior)) summed per example, with PatchVAE's 1e-7 guards.

    Args:
      probs: [B, ...] in [0, 1].
    Returns:
      [B] nats.
    """
    terms = probs * jnp.log((probs + 1e-7) / prior) + (1 - probs) * jnp.log(
        (1 - probs + 1e-7) / (1 - prior)
    )
    return _sum_per_example(terms)
