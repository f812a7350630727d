import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from helpers import built, float64, model_to_float64

from jvision.models import vae

CONFIG = ml_collections.ConfigDict(
    dict(name="vae", image_shape=(28, 28, 1), latent_dim=5, widths=(8, 8, 16), strides=(2, 1, 2))
)


def _model():
    return built(vae.build, CONFIG)


def test_shapes_through_encoder_and_decoder():
    model = _model()
    images = jnp.zeros((3, 28, 28, 1))
    mean, logvar = nnx.jit(lambda m, x: m.encode(x))(model, images)
    assert mean.shape == logvar.shape == (3, 5)
    assert nnx.jit(lambda m, z: m.decode(z))(model, mean).shape == (3, 28, 28, 1)


def test_loss_is_reconstruction_plus_kl_in_nats_per_image():
    """The loss against the formulas written out in NumPy, from the model's own logits and
    posterior, all in float64: each per-image sum has ≤ 784 terms (≤ 784·2⁻⁵³ ≈ 1e-13 relative
    between two summation orders), so RTOL = 1e-10; a wrong sign, a missing ½ or a mean over
    pixels instead of a sum is off by ≥ 1e-3."""
    model = _model()
    images = (jax.random.uniform(jax.random.key(1), (4, 28, 28, 1)) > 0.7) * 1.0
    key = jax.random.key(2)
    with float64():
        model_to_float64(model)
        batch = {"image": jnp.asarray(images, jnp.float64)}
        loss, terms = vae.train_loss(CONFIG, model, batch, key, 0)
        logits, mean, logvar = (np.asarray(x) for x in model(batch["image"], key))
    x = np.asarray(images, np.float64)
    # −log Bernoulli(x; σ(l)) = log(1 + e^l) − x·l, summed over pixels: nats per image.
    recon = (np.logaddexp(0.0, logits) - x * logits).reshape(4, -1).sum(1)
    kl = -0.5 * (1 + logvar - mean**2 - np.exp(logvar)).sum(1)  # KL(N(μ, σ²) ‖ N(0, I)).
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(loss), (recon + kl).mean(), rtol=1e-10)
    np.testing.assert_allclose(float(terms["kl_nats"]), kl.mean(), rtol=1e-10)
    np.testing.assert_allclose(float(terms["recon_nats"]), recon.mean(), rtol=1e-10)
    # An untrained decoder outputs about 0.5 everywhere: about 784·log 2 nats.
    assert 300 < float(terms["recon_nats"]) < 800


def test_eval_metrics_are_per_example_and_images_in_range():
    model = _model()
    model.eval()
    batch = {"image": jnp.ones((6, 28, 28, 1))}
    values = vae.eval_metrics(CONFIG, model, batch, jax.random.key(0), 0)
    assert {k: v.shape for k, v in values.items()} == {
        "nelbo_nats": (6,),
        "recon_nats": (6,),
        "kl_nats": (6,),
    }
    outputs = vae.image_summaries(CONFIG, model, batch, jax.random.key(0), 0)
    images = vae.draw_summaries(CONFIG, outputs)
    # A row naming the columns ("in", "out"), then the 6 input/output pairs; no padding tiles.
    assert images["reconstructions"].shape == (2, 12, 28, 28, 1)
    labels = np.asarray(images["reconstructions"][0])
    assert labels[0].any() and labels[1].any() and not np.array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[0], labels[2])  # "in" over every input.
    assert images["samples"].shape == (1, 6, 28, 28, 1)
    assert all(0 <= float(v.min()) and float(v.max()) <= 1 for v in images.values())


def test_strides_must_divide_the_image():
    try:
        built(vae.build, ml_collections.ConfigDict({**CONFIG.to_dict(), "strides": (2, 2, 2)}))
    except ValueError as error:
        assert "not divisible by the stride 8" in str(error)
    else:
        raise AssertionError("expected a ValueError")
