import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from helpers import built

from jvision.models import vae
from jvision.ops import distributions


def _model(widths=(8, 8, 16), strides=(2, 1, 2), latent_dim=5):
    config = ml_collections.ConfigDict(
        dict(image_shape=(28, 28, 1), latent_dim=latent_dim, widths=widths, strides=strides)
    )
    return built(vae.build, config)


def test_shapes_through_encoder_and_decoder():
    model = _model()
    images = jnp.zeros((3, 28, 28, 1))
    mean, logvar = nnx.jit(lambda m, x: m.encode(x))(model, images)
    assert mean.shape == logvar.shape == (3, 5)
    assert nnx.jit(lambda m, z: m.decode(z))(model, mean).shape == (3, 28, 28, 1)


def test_loss_is_reconstruction_plus_kl_in_nats_per_image():
    model = _model()
    batch = {"image": (jax.random.uniform(jax.random.key(1), (4, 28, 28, 1)) > 0.7) * 1.0}
    key = jax.random.key(2)
    loss, terms = vae.train_loss(model, batch, key, 0)
    logits, mean, logvar = model(batch["image"], key)
    recon = distributions.bernoulli_nll(logits, batch["image"])
    kl = distributions.gaussian_kl_standard_normal(mean, logvar)
    np.testing.assert_allclose(loss, (recon + kl).mean(), rtol=1e-6)
    np.testing.assert_allclose(terms["kl_nats"], kl.mean(), rtol=1e-6)
    # An untrained decoder outputs about 0.5 everywhere: about 784·log 2 nats.
    assert 300 < float(terms["recon_nats"]) < 800


def test_eval_metrics_are_per_example_and_images_in_range():
    model = _model()
    model.eval()
    batch = {"image": jnp.ones((6, 28, 28, 1))}
    values = vae.eval_metrics(model, batch, jax.random.key(0), 0)
    assert {k: v.shape for k, v in values.items()} == {
        "nelbo_nats": (6,),
        "recon_nats": (6,),
        "kl_nats": (6,),
    }
    images = vae.draw_summaries(vae.image_summaries(model, batch, jax.random.key(0), 0))
    # A row naming the columns ("in", "out"), then the 6 input/output pairs; no padding tiles.
    assert images["reconstructions"].shape == (2, 12, 28, 28, 1)
    labels = np.asarray(images["reconstructions"][0])
    assert labels[0].any() and labels[1].any() and not np.array_equal(labels[0], labels[1])
    np.testing.assert_array_equal(labels[0], labels[2])  # "in" over every input.
    assert images["samples"].shape == (1, 6, 28, 28, 1)
    assert all(0 <= float(v.min()) and float(v.max()) <= 1 for v in images.values())


def test_strides_must_divide_the_image():
    try:
        _model(strides=(2, 2, 2))
    except ValueError as error:
        assert "not divisible by the stride 8" in str(error)
    else:
        raise AssertionError("expected a ValueError")
