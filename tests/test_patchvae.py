"""PatchVAE: relaxed Bernoulli, both KL terms, the temperature schedule, shapes, pooling."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from jvision.errors import UserError
from jvision.models import _resnet, patchvae
from jvision.ops import distributions


def test_relaxed_bernoulli_mean_and_low_temperature():
    logits = jnp.full((200_000,), np.log(0.3 / 0.7))
    warm = distributions.relaxed_bernoulli_sample(jax.random.key(0), logits, 1.0)
    cold = distributions.relaxed_bernoulli_sample(jax.random.key(1), logits, 0.05)
    # The sample's sign (above 1/2) is Bernoulli(p) at every temperature.
    np.testing.assert_allclose((warm > 0.5).mean(), 0.3, atol=0.005)
    np.testing.assert_allclose(cold.mean(), 0.3, atol=0.01)
    assert ((cold < 0.01) | (cold > 0.99)).mean() > 0.9  # Nearly binary when cold.
    assert ((warm < 0.01) | (warm > 0.99)).mean() < 0.2


def test_bernoulli_kl_matches_numpy():
    q = np.random.default_rng(0).random((3, 4, 4, 5)).astype(np.float32)
    prior = 0.2
    expected = q * np.log((q + 1e-7) / prior) + (1 - q) * np.log((1 - q + 1e-7) / (1 - prior))
    np.testing.assert_allclose(
        distributions.bernoulli_kl(q, prior), expected.reshape(3, -1).sum(1), rtol=1e-5
    )
    np.testing.assert_allclose(distributions.bernoulli_kl(jnp.full((1, 3), 0.2), 0.2), 0, atol=1e-5)


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
    for s, value in expected.items():
        np.testing.assert_allclose(patchvae.temperature(s - 1, 1.0, 3e-5, 0.1), value, atol=6e-4)
    # Simulate their loop step by step over the first 5,000 steps.
    temp = 1.0
    for s in range(1, 5001):
        if s % 1000 == 1:
            temp = max(temp * np.exp(-3e-5 * s), 0.1)
        if s % 250 == 0:
            np.testing.assert_allclose(patchvae.temperature(s - 1, 1.0, 3e-5, 0.1), temp, rtol=1e-5)


@pytest.mark.parametrize("scale", _resnet.SCALES)
def test_trunk_and_decoder_shapes_for_every_scale(scale):
    trunk = _resnet.ResNetTrunk(3, scale, rngs=nnx.Rngs(0))
    features = trunk(jnp.zeros((2, 64, 64, 3)))
    assert features.shape == (2, 64 // scale, 64 // scale, 16 * scale)
    decoder = patchvae.PyramidDecoder(10, 3, 8, scale, rngs=nnx.Rngs(0))
    assert decoder(jnp.zeros((2, 64 // scale, 64 // scale, 10))).shape == (2, 64, 64, 3)


def _tiny_model(kind="patchvae"):
    config = load_config("patchvae_mnist", "tiny").model
    config.kind = kind
    return patchvae.build(config, nnx.Rngs(0))


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
    np.testing.assert_allclose(normalised.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        mean, (normalised[..., None] * head).sum(axis=(1, 2)), rtol=1e-4, atol=1e-5
    )
    # No gradient reaches the occurrence head through the pooling weights.
    model.eval()
    grads = nnx.grad(lambda m: m.posterior(images)[0].sum())(model)
    assert float(jnp.abs(grads.occurrence_logits.kernel[...]).max()) == 0.0
    assert float(jnp.abs(grads.appearance_mean.kernel[...]).max()) > 0.0


def test_loss_terms_and_both_kinds_decode_to_images():
    for kind in ("patchvae", "vae"):
        model = _tiny_model(kind)
        batch = {"image": jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))}
        loss, terms = patchvae.train_loss(model, batch, jax.random.key(2), jnp.int32(5000))
        expected = terms["recon"] + terms["kl_appearance"]
        if kind == "patchvae":
            expected += 10 * terms["kl_occurrence"]
            np.testing.assert_allclose(terms["temperature"], 0.638, atol=1e-3)
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        grids = patchvae.image_summaries(model, batch, jax.random.key(3), jnp.int32(5000))
        assert grids["reconstructions"].shape == (2, 2, 28, 28, 1)
        predicted = patchvae.predict(model, batch, jnp.int32(0))
        assert predicted["reconstruction"].shape == (2, 28, 28, 1)
        assert ("occurrence" in predicted) == (kind == "patchvae")


def test_edge_weights_have_mean_one_and_follow_edges():
    images = np.zeros((1, 8, 8, 1), np.float32)
    images[0, :, 4:] = 1.0  # A vertical edge between columns 3 and 4.
    mask = np.asarray(patchvae.edge_weights(jnp.asarray(images), 2))
    np.testing.assert_allclose(mask.mean(), 1.0, rtol=1e-6)
    assert mask[0, 0, 3, 0] > 0 and mask[0, 0, 0, 0] == 0


def test_unknown_kind_is_refused():
    config = ml_collections.ConfigDict(load_config("patchvae_mnist", "tiny").model.to_dict())
    config.kind = "vqvae"
    with pytest.raises(UserError, match="model.kind 'vqvae'"):
        patchvae.build(config, nnx.Rngs(0))
