"""DRAW: the scanned model against an explicit loop, the loss and generation paths.

Comparisons of two computations of the same maths run in float64 (`helpers.float64`, the model
cast by `helpers.model_to_float64`, inputs drawn in float32 as in training and cast), so that
their bounds follow from float64 rounding (u = 2⁻⁵³ ≈ 1.1e-16) and not from one CPU's float32
kernels. RTOL = 1e-10, of a value or of the largest magnitude of an array or gradient tensor: the
longest chain of roundings is 4 glimpses of about 8 layers each (and their reverse for the
gradients); each layer's sums have ≤ 240 terms (the loss sums 120 pixels and averages 5 images),
rounding by ≤ 240·u·Σ|terms| ≈ 3e-14·Σ|terms|, and the recurrence amplifies an early error by at
most the few-fold gain of its LSTMs per glimpse: ≲ 1e-11 end to end, about 1e-15 in practice.
A real mistake (a glimpse skipped or repeated, a state not carried, a wrong sign) moves results by
O(1) of their magnitude.

The mixed-precision (bfloat16) variants cannot run in float64, whose matmuls are float32 by
design (`jvision.ops.precision`); their bounds follow from bfloat16's rounding instead (see
BF16_*).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import built, float64, model_to_float64, to_float64

from jvision.errors import UserError
from jvision.models import draw
from jvision.ops import distributions

RTOL = 1e-10  # float64 comparisons (see above).

# bfloat16 operands carry 8 significant bits: rounding moves each operand by ≤ 2⁻⁸ of itself.
# To first order that moves the loss L by ≤ 2⁻⁸·S, S = Σ|a·∂L/∂a| over every rounded operand a
# of every matmul (24 of them: 6 dense layers × 4 glimpses). For `_model()` on `_images()` and
# the key-2 noise, S = 0.077·L (computed once in float64, by differentiating L with respect to a
# relative perturbation of each operand); a change of model or batch must recompute it.
BF16_SENSITIVITY = 0.077  # S / L.
# - bfloat16 against float32 operands: |ΔL| ≤ 2⁻⁸·S ≈ 3e-4·L to first order; 3× that leaves room
#   for higher orders and float32 summation (≤ 24·2⁻²⁴ per matmul).
BF16_VS_FLOAT32_RTOL = 3 * 2**-8 * BF16_SENSITIVITY  # ≈ 9e-4.
# - Two computations of the same bfloat16 model (scan, loop) accumulate in float32 in different
#   orders (≤ K·2⁻²⁴ ≈ 4e-6 relative, K ≤ 64), and where that leaves one operand on either side
#   of a bfloat16 rounding boundary the two round it one bfloat16 ulp (2⁻⁷) apart. Whatever
#   their number, both losses lie within 2⁻⁸·S of the float32-operand loss: |ΔL| ≤ 2⁻⁷·S ≈
#   6e-4·L to first order; 3× that as above.
BF16_LOSS_RTOL = 3 * 2**-7 * BF16_SENSITIVITY  # ≈ 1.8e-3.
# - Gradients: one such flip moved a gradient tensor by ≤ 4e-3 of its largest entry (the largest
#   effect of 40 random single flips of an operand by 2⁻⁷, in float64); 2⁻⁶ ≈ 1.6e-2 of the
#   tensor's largest entry allows for a few. A wrong or missing term moves gradients by O(1).
BF16_GRAD_RTOL = 2.0**-6


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
            dtype=matmul_dtype,  # `model.dtype`: the matmuls' operand dtype.
        )
    )
    return built(draw.build, config)


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
    with float64():
        model_to_float64(cell)
        got = [np.asarray(v) for v in cell(tuple(map(jnp.asarray, state)), jnp.asarray(inputs))]
        kernel, bias = np.asarray(cell.gates.kernel[...]), np.asarray(cell.gates.bias[...])
    assert got[0].dtype == kernel.dtype == np.float64
    expected = numpy_lstm(kernel, bias, state, inputs)
    # Gates are sums of 8 terms (≤ 8·u·Σ|terms| ≈ 1e-14 with Σ|terms| ≤ 10); σ and tanh have
    # slopes ≤ 1; the new cell state adds two terms of ≤ |c| + 1 ≤ 4: ≤ 1e-13 absolute in the
    # worst case, and values near 0 by cancellation make a relative bound meaningless.
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


def _float64_model_and_inputs(model, key):
    """Casts the model's variables to float64 (in place) and returns `_images()` and the noise of
    `key`, drawn in float32 as in training, as float64."""
    images, noise = _images(), model.noise(key, 5)
    with float64():
        model_to_float64(model)
        return to_float64((images, noise))


def assert_close(got, expected):
    """Within RTOL of the reference's largest magnitude, in float64 (NumPy on both sides:
    outside `float64()` a JAX operation on float64 arrays would run in float32)."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype == np.float64, (got.dtype, expected.dtype)
    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL * np.abs(expected).max())


@pytest.mark.parametrize("use_attention", [True, False])
def test_scan_equals_an_explicit_python_loop(use_attention):
    model = _model(use_attention)
    images, noise = _float64_model_and_inputs(model, jax.random.key(2))
    with float64():
        canvas, steps = nnx.jit(lambda m, x, z: m(x, z, record=True))(model, images, noise)
        glimpse = nnx.jit(lambda m, carry, x, z: m.glimpse(carry, x, z))
        carry = (jnp.zeros(images.shape), model._zero_state(5), model._zero_state(5))
        for t in range(model.num_glimpses):
            carry, outputs = glimpse(model, carry, images, noise[t])
            assert_close(steps["kl_nats"][t], outputs["kl_nats"])
            assert_close(steps["canvas"][t], outputs["canvas"])
        assert_close(canvas, carry[0])


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


def _losses_and_gradients(model, images, noise):
    """Loss and gradients of the scan and of the loop, as NumPy (each in its own dtype)."""
    scanned_loss, scanned = nnx.jit(nnx.value_and_grad(_scanned_loss))(model, images, noise)
    looped_loss, looped = nnx.jit(nnx.value_and_grad(_looped_loss))(model, images, noise)

    def as_numpy(grads):
        return {path: np.asarray(g[...]) for path, g in nnx.to_flat_state(grads)}

    return np.asarray(scanned_loss), np.asarray(looped_loss), as_numpy(scanned), as_numpy(looped)


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_gradients_of_the_rematerialised_scan_equal_the_explicit_loop(matmul_dtype):
    model = _model(matmul_dtype=matmul_dtype)
    if matmul_dtype == "float32":
        images, noise = _float64_model_and_inputs(model, jax.random.key(2))
        with float64():
            results = _losses_and_gradients(model, images, noise)
        loss_rtol, grad_rtol = RTOL, RTOL
    else:  # float32 with bfloat16 matmul operands, as trained; bounds: see BF16_*.
        images = _images()
        results = _losses_and_gradients(model, images, model.noise(jax.random.key(2), 5))
        loss_rtol, grad_rtol = BF16_LOSS_RTOL, BF16_GRAD_RTOL
    scanned_loss, looped_loss, scanned, looped = results
    dtype = np.float64 if matmul_dtype == "float32" else np.float32
    assert scanned_loss.dtype == looped_loss.dtype == dtype, (scanned_loss.dtype, dtype)
    np.testing.assert_allclose(scanned_loss, looped_loss, rtol=loss_rtol)
    assert set(scanned) == set(looped)
    for path, g in scanned.items():
        want = looped[path]
        assert g.dtype == want.dtype == dtype, (path, g.dtype, want.dtype)
        atol = grad_rtol * np.abs(want).max()  # Of the tensor's largest gradient.
        np.testing.assert_allclose(g, want, rtol=0, atol=atol, err_msg=str(path))


def test_bfloat16_matmuls_stay_close_to_float32():
    images = _images()
    exact, mixed = _model(), _model(matmul_dtype="bfloat16")
    noise = exact.noise(jax.random.key(2), images.shape[0])
    nnx.update(mixed, nnx.state(exact))
    np.testing.assert_allclose(
        _scanned_loss(mixed, images, noise),
        _scanned_loss(exact, images, noise),
        rtol=BF16_VS_FLOAT32_RTOL,
    )
    assert _scanned_loss(mixed, images, noise) != _scanned_loss(exact, images, noise)


def test_kl_per_step_matches_numpy():
    model = _model()
    images, noise = _float64_model_and_inputs(model, jax.random.key(3))
    with float64():
        carry = (jnp.zeros(images.shape), model._zero_state(5), model._zero_state(5))
        _, encoder_state, decoder_state = carry
        # Step 1 by hand: the posterior of the encoder's first state.
        read, _ = model.read(images, images - 0.5, decoder_state[0])
        hidden, _ = model.encoder(encoder_state, jnp.concatenate([read, decoder_state[0]], -1))
        mean, logvar = np.split(np.asarray(model.posterior(hidden)), 2, axis=-1)
        _, steps = model(images, noise)
        got = np.asarray(steps["kl_nats"][0])
    assert got.dtype == mean.dtype == np.float64
    expected = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).sum(-1)
    # Near the prior (as at initialisation) the KL, ~1e-3 nats, is a difference of terms summing
    # to ~3 nats: its rounding is relative to those, ≤ 6·u·3 ≈ 2e-15 nats per side. ATOL = 1e-13;
    # a wrong formula (a missing ½, σ for σ²) is off by ≥ 1e-3 nats.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


def test_loss_is_final_canvas_bce_plus_summed_kl():
    model = _model()
    images, _ = _float64_model_and_inputs(model, jax.random.key(4))
    batch = {"image": images}
    key = jax.random.key(4)
    with float64():
        loss, terms = draw.train_loss(None, model, batch, key, 0)  # DRAW reads no setting.
        canvas, steps = model(batch["image"], model.noise(key, 5))  # The noise train_loss draws.
        recon = distributions.bernoulli_nll(canvas, batch["image"])
        expected = float((recon + steps["kl_nats"].sum(0)).mean())
        loss, recon_nats, recon = float(loss), float(terms["recon_nats"]), float(recon.mean())
        assert canvas.dtype == jnp.float64
    np.testing.assert_allclose(loss, expected, rtol=RTOL)
    np.testing.assert_allclose(recon_nats, recon, rtol=RTOL)
    # The untrained canvas is near 0.5 everywhere: about log 2 nats per pixel.
    assert 0.5 * 120 * np.log(2) < recon_nats < 2 * 120 * np.log(2)


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
    canvases, boxes = nnx.jit(lambda m, z: m.generate(z))(model, model.noise(jax.random.key(5), 3))
    assert canvases.shape == (20, 3, 12, 10, 1)
    assert (boxes is None) == (not use_attention)
    if use_attention:
        assert boxes.shape == (20, 3, 4)
    images = {"image": _images((3, 12, 10, 1))}
    outputs = nnx.jit(draw.image_summaries, static_argnums=0)(
        None, model, images, jax.random.key(6), 0
    )
    grids = draw.draw_summaries(None, jax.device_get(outputs))
    shown = len(draw._shown_steps(20))
    assert shown == 16
    assert grids["generation"].shape == (3, shown, 12, 10, 3)
    assert grids["reconstruction"].shape == (3, shown + 1, 12, 10, 3)
    assert grids["samples"].shape == (1, 3, 12, 10, 1)  # The 3 samples, no padding tiles.
    for grid in grids.values():
        assert 0 <= float(grid.min()) and float(grid.max()) <= 1
    red_pixels = np.all(np.isclose(grids["generation"], draw.WRITE_COLOR), axis=-1).sum()
    assert (red_pixels > 0) == use_attention


def test_no_glimpses_is_a_user_error():
    with pytest.raises(UserError, match="num_glimpses=0: use 1 or more"):
        _model(num_glimpses=0)
