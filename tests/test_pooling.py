"""ops.pooling.max_pool against a NumPy loop over windows, and against `lax.reduce_window`'s
gradient, in float64 on inputs full of ties (small integers), so every comparison is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import benchmark, float64, run_benchmark, table_rows

from jvision.ops import pooling

reduce_window = benchmark("pooling").reduce_window  # lax.reduce_window's max: the reference.

# (height, width, window, stride, padding): the ResNet stem's pool, SSD-like 2×2, odd sizes,
# overlapping stride-1 windows, adjacent stride-3 windows, gaps between windows.
GEOMETRIES = [
    (14, 14, 3, 2, 1),
    (8, 8, 2, 2, 0),
    (7, 9, 3, 2, 1),
    (6, 5, 3, 1, 1),
    (9, 9, 3, 3, 0),
    (10, 10, 2, 3, 0),
]


def output_size(size, window, stride, padding):
    return (size + 2 * padding - window) // stride + 1


def numpy_pool(x, grad, window, stride, padding):
    """Forward and gradient, one window at a time: each output's gradient goes to the first
    position of its window (row-major) that holds the window's maximum."""
    batch, height, width, channels = x.shape
    padded = np.pad(x, ((0, 0), (padding,) * 2, (padding,) * 2, (0, 0)), constant_values=-np.inf)
    out_h = output_size(height, window, stride, padding)
    out_w = output_size(width, window, stride, padding)
    pooled = np.zeros((batch, out_h, out_w, channels))
    dpadded = np.zeros_like(padded)
    for b in range(batch):
        for row in range(out_h):
            for col in range(out_w):
                for c in range(channels):
                    top, left = row * stride, col * stride
                    cells = padded[b, top : top + window, left : left + window, c]
                    i, j = np.unravel_index(np.argmax(cells), cells.shape)  # First maximum.
                    pooled[b, row, col, c] = cells[i, j]
                    dpadded[b, top + i, left + j, c] += grad[b, row, col, c]
    return pooled, dpadded[:, padding : padding + height, padding : padding + width]


@pytest.mark.parametrize("height, width, window, stride, padding", GEOMETRIES)
def test_max_pool_matches_numpy_and_reduce_window(height, width, window, stride, padding):
    rng = np.random.default_rng(height * 100 + width)
    x = rng.integers(-2, 3, (2, height, width, 3)).astype(np.float64)
    out_h = output_size(height, window, stride, padding)
    out_w = output_size(width, window, stride, padding)
    grad = rng.integers(1, 5, (2, out_h, out_w, 3)).astype(np.float64)
    expected = numpy_pool(x, grad, window, stride, padding)

    def vjp(pool, x, grad):
        pooled, back = jax.vjp(lambda x: pool(x, window, stride, padding), x)
        return pooled, back(grad)[0]

    for pool in (pooling.max_pool, reduce_window):
        with float64():
            pooled, dx = (np.asarray(a) for a in vjp(pool, x, grad))
        np.testing.assert_array_equal(pooled, expected[0])
        np.testing.assert_array_equal(dx, expected[1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_under_jit_keeps_dtype_and_routes_as_reduce_window(dtype):
    """Under jit, in the compute dtypes: maxima and selects do not round and the gradients are
    sums of ones, so values and gradients equal `lax.reduce_window`'s exactly."""
    x = jnp.asarray(np.random.default_rng(0).integers(-3, 4, (2, 14, 14, 4)), dtype)

    def grad(pool):
        return jax.jit(jax.value_and_grad(lambda v: pool(v).astype(jnp.float32).sum()))(x)

    theirs = grad(lambda v: reduce_window(v, 3, 2, 1))
    ours = grad(lambda v: pooling.max_pool(v, 3, 2, 1))
    assert ours[1].dtype == dtype and pooling.max_pool(x, 3, 2, 1).shape == (2, 7, 7, 4)
    np.testing.assert_array_equal(np.float32(ours[0]), np.float32(theirs[0]))
    np.testing.assert_array_equal(np.float32(ours[1]), np.float32(theirs[1]))


def test_nan_takes_its_windows_gradient_as_in_pytorch():
    torch = pytest.importorskip("torch")
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 4, 4, 2)
    x[0, 1, 2, 0] = x[0, 3, 3, 1] = np.nan
    grad = jax.grad(lambda v: jnp.nansum(pooling.max_pool(v, 2, 2, 0)))(jnp.asarray(x))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    torch.nn.functional.max_pool2d(tx, 2, 2).nansum().backward()
    np.testing.assert_array_equal(np.asarray(grad), tx.grad.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("size, window, stride, padding", [(1, 2, 2, 0), (4, 3, 2, 2)])
def test_geometries_that_leave_a_window_empty_are_refused(size, window, stride, padding):
    with pytest.raises(ValueError, match="max_pool"):
        pooling.max_pool(jnp.zeros((1, size, size, 1)), window, stride, padding)


def test_pooling_benchmark_times_every_pool_and_finds_the_same_bits():
    """benchmarks/pooling.py: a row per pool and pass, both times, and the same bits as XLA's where
    the windows are disjoint (no input's gradient is a sum; overlapping windows may sum theirs in
    another order)."""
    done = run_benchmark("pooling.py", "--repeats=1", "--rounds=1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = table_rows(done.stdout)
    assert len(rows) == 6, done.stdout
    for cells in rows:
        assert cells[2] in ("forward", "with gradient")
        assert float(cells[3]) > 0 and float(cells[4]) > 0
        disjoint = cells[1].endswith(", 2, 2, 0")
        assert cells[6] == "yes" if disjoint else cells[6] in ("yes", "no"), cells


@pytest.mark.parametrize("height, width, window, stride, padding", GEOMETRIES)
def test_ties_route_the_gradient_as_pytorch_max_pool2d(height, width, window, stride, padding):
    """On exact ties (a constant map, as a uniform background gives) the gradient goes where
    PyTorch's F.max_pool2d sends it, the models' originals."""
    torch = pytest.importorskip("torch")
    x = np.full((1, height, width, 2), 0.5, np.float32)
    grad = jax.grad(lambda v: pooling.max_pool(v, window, stride, padding).sum())(jnp.asarray(x))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    torch.nn.functional.max_pool2d(tx, window, stride, padding).sum().backward()
    np.testing.assert_array_equal(np.asarray(grad), tx.grad.numpy().transpose(0, 2, 3, 1))
