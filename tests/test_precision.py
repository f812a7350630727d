"""Mixed-precision dense matmuls: values and both gradients against NumPy on rounded operands."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jvision.errors import UserError
from jvision.ops import precision


def _rounded(x: jax.Array) -> np.ndarray:
    """The bfloat16 value of each element, exactly, as float64."""
    return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


U32 = 2.0**-24  # float32's unit roundoff.


def assert_float32_sum_of_exact_products(got, a, b, extra=None):
    """`got` (float32) is a @ b, for bfloat16-valued a [M, K] and b [K, N], summed in float32.

    This dot product is float32 by design (the library accumulates bfloat16 operands in float32),
    so float64 is not available; the bound is float32's, derived: a product of two bfloat16
    values (8-bit significands) has ≤ 16 significant bits, exact in float32 (24), so only the
    K - 1 additions round, each by ≤ u₃₂ = 2⁻²⁴ relative, in whatever order or pairing the CPU's
    kernel picks (FMA, AVX-512 BF16 pairs, AMX tiles): |got - a @ b| ≤ (K - 1)·u₃₂·(|a| @ |b|).
    K·u₃₂ covers that and the float64 reference's own rounding (K·2⁻⁵³). `extra` is a float32
    bias added after the product: one more rounding, ≤ u₃₂·|result|.

    Dropping the cotangent's rounding, a transposed operand or float32 instead of bfloat16
    operands moves entries by up to one bfloat16 ulp, 2⁻⁸·|a| @ |b|: here 10²–10⁴ times this
    bound (K ≤ 6) in every entry."""
    exact, scale = a @ b, np.abs(a) @ np.abs(b)
    bound = a.shape[-1] * U32 * scale
    if extra is not None:
        exact, bound = exact + extra, bound + U32 * (scale + np.abs(extra))
    difference = np.abs(np.asarray(got, np.float64) - exact)
    assert (difference <= bound).all(), (difference.max(), difference / np.maximum(bound, 1e-300))


@pytest.mark.parametrize("lhs_shape", [(6, 5), (2, 3, 5)])
def test_bfloat16_dot_and_its_gradients_match_numpy(lhs_shape):
    keys = jax.random.split(jax.random.key(0), 3)
    lhs = jax.random.normal(keys[0], lhs_shape)
    rhs = jax.random.normal(keys[1], (5, 4))
    cotangent = jax.random.normal(keys[2], (*lhs_shape[:-1], 4))
    dot = precision.dot_general("bfloat16")
    dims = (((lhs.ndim - 1,), (0,)), ((), ()))

    out, vjp = jax.vjp(lambda a, b: dot(a, b, dims), lhs, rhs)
    d_lhs, d_rhs = vjp(cotangent)

    # bfloat16 products are exact in float32, so only the summation order differs.
    a, b, g = _rounded(lhs), _rounded(rhs), _rounded(cotangent)
    assert out.dtype == d_lhs.dtype == d_rhs.dtype == jnp.float32
    assert_float32_sum_of_exact_products(out.reshape(-1, 4), a.reshape(-1, 5), b)
    assert_float32_sum_of_exact_products(d_lhs.reshape(-1, 5), g.reshape(-1, 4), b.T)
    assert_float32_sum_of_exact_products(d_rhs, a.reshape(-1, 5).T, g.reshape(-1, 4))
    # Rounding is real: the float32 product differs.
    assert not np.allclose(
        out, np.asarray(lhs, np.float64) @ np.asarray(rhs, np.float64), atol=1e-5
    )


def test_backward_matmuls_take_bfloat16_operands():
    dot = precision.dot_general("bfloat16")
    dims = (((1,), (0,)), ((), ()))
    loss = lambda a, b: jnp.sin(dot(a, b, dims)).sum()  # noqa: E731
    text = (
        jax.jit(jax.grad(loss, argnums=(0, 1))).lower(jnp.ones((8, 5)), jnp.ones((5, 3))).as_text()
    )
    dots = [line for line in text.splitlines() if "dot_general" in line]
    operands = [line.split(" : (")[1].split(") -> ")[0].split(", ") for line in dots]
    assert len(dots) == 3 and all(o.endswith("xbf16>") for ops in operands for o in ops), dots


def test_float32_is_plain_dot_general_and_linear_layers_accept_it():
    assert precision.dot_general("float32") is jax.lax.dot_general
    layer = nnx.Linear(5, 4, dot_general=precision.dot_general("bfloat16"), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 5))
    assert_float32_sum_of_exact_products(
        layer(x), _rounded(x), _rounded(layer.kernel[...]), extra=np.asarray(layer.bias[...])
    )


def test_gradients_come_back_in_the_primals_dtypes():
    dot = precision.dot_general("bfloat16")
    dims = (((1,), (0,)), ((), ()))
    lhs, rhs = jnp.ones((4, 3), jnp.bfloat16), jnp.ones((3, 2), jnp.float32)
    d_lhs, d_rhs = jax.grad(lambda a, b: dot(a, b, dims).sum(), argnums=(0, 1))(lhs, rhs)
    assert (d_lhs.dtype, d_rhs.dtype) == (jnp.bfloat16, jnp.float32)


def test_bad_dtype_and_unsupported_contractions_are_refused():
    with pytest.raises(UserError, match="model.dtype 'float16'"):
        precision.dot_general("float16")
    dot = precision.dot_general("bfloat16")
    with pytest.raises(NotImplementedError, match="dense layers only"):
        dot(jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5)), (((2,), (1,)), ((0,), (0,))))


FAMILIES = [
    "vae_mnist",
    "draw_mnist",
    "ssd_mnist",
    "patchvae_mnist",
    "transfer_mnist",
    "encoding_detector_mnist",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_the_dtype_policy_computes_every_family_in_bfloat16_with_float32_state(name):
    """`model.dtype="bfloat16"`: convolutions and dense layers compute in bfloat16, parameters
    and their gradients stay float32, and the loss is close to float32's. Bound: bfloat16 keeps 8
    significant bits, so each rounded operand is off by ≤ 2⁻⁹ relative and a layer's output by
    ≲ 2⁻⁸; through L ≲ 12 layers the loss moves by ≲ 12·2⁻⁸ ≈ 5% (measured: 2e-6 to 3e-3)."""
    from helpers import load_config

    from jvision import models
    from jvision.data import pipeline

    config = load_config(name, "tiny")
    family = models.get(config.model)
    batch = next(pipeline.host_batches(config, family.train_examples)[0])
    losses = {}
    for dtype in precision.DTYPES:
        config.model.dtype = dtype
        model = family.build(nnx.Rngs(0))
        layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, (nnx.Conv, nnx.Linear))]
        assert layers and all(
            layer.dtype == (None if dtype == "float32" else jnp.bfloat16) for layer in layers
        )
        loss_fn = lambda m: family.train_loss(m, batch, jax.random.key(0), 0)[0]  # noqa: E731
        if dtype == "float32":  # The reference loss: its gradients are float32's own.
            loss = nnx.jit(loss_fn)(model)
        else:
            loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
            leaves = jax.tree.leaves(grads)
            assert all(g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all() for g in leaves)
        assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
        losses[dtype] = float(loss)
    assert abs(losses["bfloat16"] - losses["float32"]) <= 12 * 2**-8 * abs(losses["float32"])


def test_a_tiny_run_in_bfloat16_reaches_its_float32_loss(tmp_path):
    """Four steps of the tiny VAE in each dtype: the same test NELBO within the bound above
    (Adam's steps are normalised, so both runs move the parameters alike)."""
    from helpers import load_config

    from jvision import train

    results = {}
    for dtype in precision.DTYPES:
        config = load_config("vae_mnist", "tiny")
        config.model.dtype = dtype
        config.evals = {"test": config.evals.test}  # Only the NELBO.
        results[dtype] = train.train_and_evaluate(config, str(tmp_path / dtype))["test/nelbo_nats"]
    assert np.isfinite(results["bfloat16"])
    assert abs(results["bfloat16"] - results["float32"]) <= 12 * 2**-8 * results["float32"]
