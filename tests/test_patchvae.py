"""PatchVAE: relaxed Bernoulli, both KL terms, the temperature schedule, shapes, pooling."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import built, load_config

from jvision import models
from jvision.errors import UserError
from jvision.models import _resnet, patchvae
from jvision.models.patchvae import networks
from jvision.ops import distributions


def test_relaxed_bernoulli_mean_and_low_temperature():
    logits = jnp.full((200_000,), np.log(0.3 / 0.7))
    warm = distributions.relaxed_bernoulli_sample(jax.random.key(0), logits, 1.0)
    cold = distributions.relaxed_bernoulli_sample(jax.random.key(1), logits, 0.05)
    # The sample's sign (above 1/2) is Bernoulli(p) at every temperature. Monte Carlo bounds, in
    # float64 means of n = 200,000 samples: 5 standard errors, 5·√(p(1-p)/n) = 5.1e-3 (a sample
    # in [0, 1] of mean p has variance ≤ p(1-p)); the cold samples' mean is p only as τ → 0: it
    # is off by ≤ τ²·π²/6·max|f'| ≤ 4.1e-4 (f the logistic density, |f'| ≤ 0.1; 3.4e-4 here).
    five_standard_errors = 5 * np.sqrt(0.3 * 0.7 / 200_000)
    np.testing.assert_allclose(np.mean(np.asarray(warm) > 0.5), 0.3, atol=five_standard_errors)
    cold_mean = np.asarray(cold, np.float64).mean()
    np.testing.assert_allclose(cold_mean, 0.3, atol=five_standard_errors + 0.05**2 * np.pi**2 / 60)
    assert ((cold < 0.01) | (cold > 0.99)).mean() > 0.9  # Nearly binary when cold.
    assert ((warm < 0.01) | (warm > 0.99)).mean() < 0.2


def test_bernoulli_kl_matches_numpy():
    q = np.random.default_rng(0).random((3, 4, 4, 5)).astype(np.float32)
    prior = 0.2
    expected = q * np.log((q + 1e-7) / prior) + (1 - q) * np.log((1 - q + 1e-7) / (1 - prior))
    # Both sides in float32 (no float64 to be had: q is float32 on both). Per element, four
    # roundings and two logs (≤ 2 ulps each) cost ≤ u·(3 + 5·(|t₁| + |t₂|) + |t₁ + t₂|), with
    # |t₁| + |t₂| ≤ log 5 + 0.8/e < 2; each side's sum of the 80 elements adds ≤ 80·u·KL (terms
    # ≥ 0): ≤ 80·u·(13 + KL) per side, u = 2⁻²⁴, twice that between the two (≈ 1.3e-5 of the
    # KL). A missing term or a wrong prior moves the KL by ≥ 1%.
    kl = expected.reshape(3, -1).sum(1)
    bound = 2 * 80 * 2.0**-24 * (13 + kl.max())
    np.testing.assert_allclose(distributions.bernoulli_kl(q, prior), kl, rtol=0, atol=bound)
    # Exactly 6e-7 (the 1e-7 guards: 3·(0.2·1e-7/0.2 + 0.8·1e-7/0.8)); float32 rounds each log's
    # argument near 1 by ≤ 2⁻²⁴ twice (≤ 1.2e-7 per log, weights summing to 1): ≤ 1e-6 in all.
    np.testing.assert_allclose(distributions.bernoulli_kl(jnp.full((1, 3), 0.2), 0.2), 0, atol=2e-6)


def test_temperature_schedule_matches_the_authors_values():
    # Their counter s = step + 1; values from their loop at s = 1001, 2001, ...
    expected = {
        1001: 0.970,
        2001: 0.914,
        3001: 0.835,
        4001: 0.741,
        5001: 0.638,
        6001: 0.533,
        7001: 0.432,
        8001: 0.340,
        9001: 0.259,
        10001: 0.192,
        11001: 0.138,
        12001: 0.1,
        50001: 0.1,
    }
    # The authors' printed values (3 decimals) differ from the exact schedule by ≤ 5.2e-4 (at
    # s = 6001: 0.53352); float32 adds ≤ (2·|exponent| + 3)·2⁻²⁴ ≤ 1e-6. A schedule off by one
    # update (1000 steps) moves τ by ≥ 0.03 until it reaches the minimum.
    for s, value in expected.items():
        np.testing.assert_allclose(networks.temperature(s - 1, 1.0, 3e-5, 0.1), value, atol=6e-4)
    # Simulate their loop step by step over the first 5,000 steps.
    temp = 1.0
    for s in range(1, 5001):
        if s % 1000 == 1:
            temp = max(temp * np.exp(-3e-5 * s), 0.1)
        if s % 250 == 0:  # float32 against float64: exp of an argument ≤ 0.3 rounded twice,
            # ≤ (2·0.3 + 3)·2⁻²⁴ ≈ 2.2e-7 relative.
            np.testing.assert_allclose(networks.temperature(s - 1, 1.0, 3e-5, 0.1), temp, rtol=1e-6)


@pytest.mark.parametrize("scale", _resnet.SCALES)
def test_trunk_and_decoder_shapes_for_every_scale(scale):
    def outputs():  # Shapes only: traced, never compiled.
        trunk = _resnet.ResNetTrunk(3, scale, rngs=nnx.Rngs(0))
        decoder = networks.PyramidDecoder(10, 3, 8, scale, rngs=nnx.Rngs(0))
        features = trunk(jnp.zeros((2, 64, 64, 3)))
        return features, decoder(jnp.zeros((2, 64 // scale, 64 // scale, 10)))

    features, decoded = jax.eval_shape(outputs)
    assert features.shape == (2, 64 // scale, 64 // scale, 16 * scale)
    assert decoded.shape == (2, 64, 64, 3)


def _tiny_config(kind="patchvae"):
    config = load_config("patchvae_mnist", "tiny").model
    config.kind = kind
    return config


def _tiny_model(kind="patchvae"):
    return built(patchvae.build, _tiny_config(kind))


def test_appearance_pooling_is_a_weighted_average_over_locations():
    model = _tiny_model()
    images = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    mean, variance, logits = model.posterior(images)
    assert mean.shape == variance.shape == (3, 8, 4) and logits.shape == (3, 7, 7, 8)
    # Recompute by hand: normalised occurrence weights sum to one over locations per part.
    f = model.encoder(images)
    head = model.appearance_mean(f).reshape(3, 7, 7, 8, 4)
    weights = jax.nn.sigmoid(logits)
    normalised = weights / (weights.sum(axis=(1, 2), keepdims=True) + 1e-7)
    # float32 (the model's dtype), the encoder and heads the same computations on both sides:
    # the 49-location sums differ in order and in where they divide. Each of the two sums of 49
    # weights rounds by ≤ 48·u relative (u = 2⁻²⁴), a division by u: Σ normalised = 1 within
    # ≤ 98·u, plus the 1e-7 guard's 1e-7/Σw ≤ 2e-8 (Σw ≥ 7 here).
    np.testing.assert_allclose(normalised.sum(axis=(1, 2)), 1.0, rtol=100 * 2.0**-24)
    # Each pooled mean: ≤ 99·u·Σ|normalised·head| per side (its own total of the weights, the
    # products, the 49-term sum, a division), twice that between them. Pooling unnormalised
    # weights or over the wrong axis is off by O(|mean|).
    pooled = np.asarray((normalised[..., None] * head).sum(axis=(1, 2)))
    bound = 2 * 99 * 2.0**-24 * np.asarray((normalised[..., None] * jnp.abs(head)).sum(axis=(1, 2)))
    difference = np.abs(np.asarray(mean) - pooled)
    assert (difference <= bound).all(), (difference.max(), (difference / bound).max())
    # No gradient reaches the occurrence head through the pooling weights.
    model.eval()
    grads = nnx.jit(nnx.grad(lambda m: m.posterior(images)[0].sum()))(model)
    assert float(jnp.abs(grads.occurrence_logits.kernel[...]).max()) == 0.0
    assert float(jnp.abs(grads.appearance_mean.kernel[...]).max()) > 0.0


def test_loss_terms_and_both_kinds_decode_to_images():
    for kind in ("patchvae", "vae"):
        model = _tiny_model(kind)
        batch = {"image": jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))}
        family = models.get(_tiny_config(kind))
        loss, terms = nnx.jit(family.train_loss)(model, batch, jax.random.key(2), 5000)
        expected = terms["recon"] + terms["kl_appearance"]
        if kind == "patchvae":
            expected += 10 * terms["kl_occurrence"]
            # The authors' value (see the schedule test above: 0.63849 exactly).
            np.testing.assert_allclose(terms["temperature"], 0.638, atol=6e-4)
        # float32 sums of the same non-negative terms in two orders: ≤ 11 roundings (the
        # per-image weighted sum, the batch means), ≤ 11·2⁻²⁴ ≈ 7e-7 relative.
        np.testing.assert_allclose(loss, expected, rtol=16 * 2.0**-24)
        grids = nnx.jit(family.image_summaries)(model, batch, jax.random.key(3), 5000)
        assert grids["reconstructions"].shape == (2, 2, 28, 28, 1)
        predicted = nnx.jit(family.predict)(model, batch, 0)
        assert predicted["reconstruction"].shape == (2, 28, 28, 1)
        assert ("occurrence" in predicted) == (kind == "patchvae")


def test_edge_weights_have_mean_one_and_follow_edges():
    images = np.zeros((1, 8, 8, 1), np.float32)
    images[0, :, 4:] = 1.0  # A vertical edge between columns 3 and 4.
    mask = np.asarray(patchvae.edge_weights(jnp.asarray(images), 2))
    # The cell sums of this 0/1 image's |Laplacian| are integers, their mean exact (÷ 64): each
    # weight is one float32 division (≤ 2 roundings, ≤ 2·2⁻²⁴), averaged here in float64.
    np.testing.assert_allclose(mask.mean(dtype=np.float64), 1.0, rtol=4 * 2.0**-24)
    assert mask[0, 0, 3, 0] > 0 and mask[0, 0, 0, 0] == 0


def test_unknown_kind_is_refused():
    config = ml_collections.ConfigDict(load_config("patchvae_mnist", "tiny").model.to_dict())
    config.kind = "vqvae"
    with pytest.raises(UserError, match="model.kind 'vqvae'"):
        patchvae.build(config, nnx.Rngs(0))
