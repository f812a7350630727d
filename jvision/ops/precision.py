"""The compute-dtype policy (`config.model.dtype`), and mixed-precision matmuls.

`model.dtype` is the dtype of the operands of every convolution and dense layer: "float32" (the
default: everything float32), or "bfloat16". `apply_policy`, run on every model a family builds
(`jvision.models.get` wraps `build` with it), sets Flax's `dtype=` of each `Conv`,
`ConvTranspose` and `Linear`: in bfloat16 they take bfloat16 inputs and kernels and give
bfloat16 outputs, so their backward passes run in bfloat16 too. Parameters, optimizer state,
normalisation (BatchNorm and GroupNorm compute in float32 and give float32), losses and
likelihoods stay float32: a family casts its outputs with `float32` before a loss. DRAW's dense
layers also use `dot_general` below: float32 results, since its canvas sums 64 glimpses'
updates.

Mixed-precision matmuls: bfloat16 operands, float32 accumulation and results, in both passes.

Parameters and activations stay float32; only the operands of a dense layer's matmul are rounded to
bfloat16, which is what a TPU does by default with float32 matmuls. On CPUs with AMX or AVX512-BF16
(and on GPUs and TPUs) those matmuls are several times faster.

JAX's own autodiff of `dot(x.astype(bf16), w.astype(bf16), preferred_element_type=f32)` runs the
backward matmuls in float32 (the cotangent is float32), which gives up the speed where two thirds
of the work is. `dot_general(dtype)` fixes that with a custom VJP: the cotangent is rounded too,
and both gradient matmuls take bfloat16 operands and accumulate in float32.
"""

import functools

import jax
import jax.numpy as jnp

from jvision.errors import UserError

FLOAT32 = "float32"
DTYPES = (FLOAT32, "bfloat16")


def check(dtype: str) -> str:
    """`dtype` if it is one of DTYPES, else `UserError`."""
    if dtype not in DTYPES:
        raise UserError(f"model.dtype {dtype!r} is not one of {DTYPES}")
    return dtype


def apply_policy(model, dtype: str):
    """Sets the compute dtype of every convolution and dense layer of `model` (in place) and
    returns it. float32 leaves Flax's default (None: the layers compute in their inputs' and
    parameters' dtype), so float32 models are exactly as built."""
    from flax import nnx

    if check(dtype) != FLOAT32:
        layers = (nnx.Conv, nnx.ConvTranspose, nnx.Linear)
        model.set_attributes(*layers, dtype=jnp.dtype(dtype), raise_if_not_found=False)
    return model


def float32(tree):
    """Every floating array of `tree` narrower than float32 (bfloat16) as float32, the rest as
    it is: a model's outputs before its loss (float64, in tests, stays float64)."""

    def widen(x):
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        return x.astype(jnp.float32) if floating and jnp.finfo(x.dtype).bits < 32 else x

    return jax.tree.map(widen, tree)


def _dense_dims(lhs, rhs, dimension_numbers) -> bool:
    """True for a dense layer's contraction: lhs [..., K] · rhs [K, N], no batch dimensions."""
    return (
        tuple(map(tuple, dimension_numbers[0])) == ((lhs.ndim - 1,), (0,))
        and not any(dimension_numbers[1])
        and rhs.ndim == 2
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_dense(lhs: jax.Array, rhs: jax.Array, dtype) -> jax.Array:
    return jnp.matmul(lhs.astype(dtype), rhs.astype(dtype), preferred_element_type=jnp.float32)


def _mixed_dense_fwd(lhs, rhs, dtype):
    dtypes = (jnp.zeros((), lhs.dtype), jnp.zeros((), rhs.dtype))  # Residuals must be arrays.
    lhs, rhs = lhs.astype(dtype), rhs.astype(dtype)
    return jnp.matmul(lhs, rhs, preferred_element_type=jnp.float32), (lhs, rhs, dtypes)


def _mixed_dense_bwd(dtype, residuals, cotangent):
    lhs, rhs, (lhs_like, rhs_like) = residuals
    cotangent = cotangent.astype(dtype)
    d_lhs = jnp.matmul(cotangent, rhs.T, preferred_element_type=jnp.float32)
    flat_lhs = lhs.reshape(-1, lhs.shape[-1])
    flat_cotangent = cotangent.reshape(-1, cotangent.shape[-1])
    d_rhs = jnp.matmul(flat_lhs.T, flat_cotangent, preferred_element_type=jnp.float32)
    return d_lhs.astype(lhs_like.dtype), d_rhs.astype(rhs_like.dtype)  # As the primals.


_mixed_dense.defvjp(_mixed_dense_fwd, _mixed_dense_bwd)


def dot_general(dtype: str):
    """A `dot_general` for `nnx.Linear(dot_general=...)` computing in `dtype` (see module doc).

    'float32' gives `jax.lax.dot_general` itself. Otherwise only a dense layer's contraction
    (inputs [..., K] with a kernel [K, N]) is supported; the result is float32.
    """
    if check(dtype) == FLOAT32:
        return jax.lax.dot_general
    compute_dtype = jnp.dtype(dtype)

    def mixed_dot_general(
        lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **unused_kwargs
    ):
        del precision, unused_kwargs  # The operand dtype is the precision; results are float32.
        if preferred_element_type not in (None, jnp.float32):
            raise NotImplementedError("mixed-precision dot_general returns float32 results")
        if not _dense_dims(lhs, rhs, dimension_numbers):
            raise NotImplementedError(
                f"mixed-precision dot_general supports dense layers only, got {dimension_numbers}"
            )
        return _mixed_dense(lhs, rhs, compute_dtype)

    return mixed_dot_general
