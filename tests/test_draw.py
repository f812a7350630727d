"""DRAW: the scanned model against an explicit loop, the loss and generation paths."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jvision.models import draw
from jvision.ops import distributions


def _model(use_attention=True, num_glimpses=4, image_shape=(12, 10, 1), matmul_dtype="float32"):
    config = ml_collections.ConfigDict(
        dict(
            image_shape=image_shape,
            num_glimpses=num_glimpses,
            hidden_size=16,
            latent_size=3,
            read_size=2,
            write_size=3,
            use_attention=use_attention,
            matmul_dtype=matmul_dtype,
        )
    )
    return draw.build(config, nnx.Rngs(0))


def _images(shape=(5, 12, 10, 1)):
    return (jax.random.uniform(jax.random.key(1), shape) > 0.6).astype(jnp.float32)


def numpy_lstm(kernel, bias, state, inputs):
    hidden, cell = state
    gates = np.concatenate([inputs, hidden], -1) @ kernel + bias
    i, f, g, o = np.split(gates, 4, axis=-1)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    cell = sig(f) * cell + sig(i) * np.tanh(g)
    return sig(o) * np.tanh(cell), cell


def test_lstm_matches_numpy():
    cell = draw.LSTM(3, 4, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    state = (rng.normal(size=(2, 4)), rng.normal(size=(2, 4)))
    inputs = rng.normal(size=(2, 3))
    got = cell(tuple(jnp.asarray(s, jnp.float32) for s in state), jnp.asarray(inputs, jnp.float32))
    expected = numpy_lstm(np.asarray(cell.gates.kernel), np.asarray(cell.gates.bias), state, inputs)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_attention", [True, False])
def test_scan_equals_an_explicit_python_loop(use_attention):
    model = _model(use_attention)
    images = _images()
    noise = model.noise(jax.random.key(2), images.shape[0])
    canvas, steps = model(images, noise, record=True)

    carry = (jnp.zeros(images.shape), model._zero_state(5), model._zero_state(5))
    for t in range(model.num_glimpses):
        carry, outputs = model.glimpse(carry, images, noise[t])
        np.testing.assert_allclose(steps["kl_nats"][t], outputs["kl_nats"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(steps["canvas"][t], outputs["canvas"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(canvas, carry[0], rtol=1e-5, atol=1e-5)


def _looped_loss(model, images, noise):
    carry = (jnp.zeros(images.shape), model._zero_state(5), model._zero_state(5))
    kl = 0.0
    for t in range(model.num_glimpses):
        carry, outputs = model.glimpse(carry, images, noise[t])
        kl = kl + outputs["kl_nats"]
    return (distributions.bernoulli_nll(carry[0], images) + kl).mean()


def _scanned_loss(model, images, noise):
    canvas, steps = model(images, noise)
    return (distributions.bernoulli_nll(canvas, images) + steps["kl_nats"].sum(0)).mean()


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_gradients_of_the_rematerialised_scan_equal_the_explicit_loop(matmul_dtype):
    model = _model(matmul_dtype=matmul_dtype)
    images = _images()
    noise = model.noise(jax.random.key(2), images.shape[0])
    scanned_loss, scanned = nnx.value_and_grad(_scanned_loss)(model, images, noise)
    looped_loss, looped = nnx.value_and_grad(_looped_loss)(model, images, noise)
    np.testing.assert_allclose(scanned_loss, looped_loss, rtol=1e-5)
    looped = dict(nnx.to_flat_state(looped))
    for path, g in nnx.to_flat_state(scanned):
        np.testing.assert_allclose(
            g[...], looped[path][...], rtol=1e-4, atol=1e-5, err_msg=str(path)
        )


def test_bfloat16_matmuls_stay_close_to_float32():
    images = _images()
    exact, mixed = _model(), _model(matmul_dtype="bfloat16")
    noise = exact.noise(jax.random.key(2), images.shape[0])
    nnx.update(mixed, nnx.state(exact))
    np.testing.assert_allclose(
        _scanned_loss(mixed, images, noise), _scanned_loss(exact, images, noise), rtol=1e-2
    )
    assert _scanned_loss(mixed, images, noise) != _scanned_loss(exact, images, noise)


def test_kl_per_step_matches_numpy():
    model = _model()
    images = _images()
    noise = model.noise(jax.random.key(3), 5)
    carry = (jnp.zeros(images.shape), model._zero_state(5), model._zero_state(5))
    _, encoder_state, decoder_state = carry
    # Step 1 by hand: the posterior of the encoder's first state.
    read, _ = model.read(images, images - 0.5, decoder_state[0])
    hidden, _ = model.encoder(encoder_state, jnp.concatenate([read, decoder_state[0]], -1))
    mean, logvar = np.split(np.asarray(model.posterior(hidden), np.float64), 2, axis=-1)
    expected = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).sum(-1)
    _, steps = model(images, noise)
    np.testing.assert_allclose(steps["kl_nats"][0], expected, rtol=1e-4)


def test_loss_is_final_canvas_bce_plus_summed_kl():
    model = _model()
    batch = {"image": _images()}
    key = jax.random.key(4)
    loss, terms = draw.train_loss(model, batch, key, 0)
    canvas, steps = model(batch["image"], model.noise(key, 5))
    recon = distributions.bernoulli_nll(canvas, batch["image"])
    np.testing.assert_allclose(loss, (recon + steps["kl_nats"].sum(0)).mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["recon_nats"], recon.mean(), rtol=1e-5)
    # The untrained canvas is near 0.5 everywhere: about log 2 nats per pixel.
    assert 0.5 * 120 * np.log(2) < float(terms["recon_nats"]) < 2 * 120 * np.log(2)


def _lowered_size(model, images) -> int:
    graphdef, state = nnx.split(model)

    def forward(state, images, noise):
        return nnx.merge(graphdef, state)(images, noise)[0]

    noise = model.noise(jax.random.key(0), images.shape[0])
    return len(jax.jit(forward).lower(state, images, noise).as_text())


def test_program_size_does_not_grow_with_glimpses():
    images = _images()
    short = _lowered_size(_model(num_glimpses=2), images)
    long = _lowered_size(_model(num_glimpses=40), images)
    assert long < 1.05 * short  # The glimpse is traced once inside a scan, not unrolled.


@pytest.mark.parametrize("use_attention", [True, False])
def test_generation_and_summaries(use_attention):
    model = _model(use_attention, num_glimpses=20)
    canvases, boxes = model.generate(model.noise(jax.random.key(5), 3))
    assert canvases.shape == (20, 3, 12, 10, 1)
    assert (boxes is None) == (not use_attention)
    if use_attention:
        assert boxes.shape == (20, 3, 4)
    outputs = draw.image_summaries(model, {"image": _images((3, 12, 10, 1))}, jax.random.key(6), 0)
    grids = draw.draw_summaries(jax.device_get(outputs))
    shown = len(draw._shown_steps(20))
    assert shown == 16
    assert grids["generation"].shape == (3, shown, 12, 10, 3)
    assert grids["reconstruction"].shape == (3, shown + 1, 12, 10, 3)
    assert grids["samples"].shape == (1, 16, 12, 10, 1)
    for grid in grids.values():
        assert 0 <= float(grid.min()) and float(grid.max()) <= 1
    red_pixels = np.all(np.isclose(grids["generation"], draw.WRITE_COLOR), axis=-1).sum()
    assert (red_pixels > 0) == use_attention
