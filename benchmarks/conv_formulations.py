"""Every convolution layer of the conv models, three ways, on the CPU: XLA's convolution, the same
convolution as one matmul over patches (`benchmarks/im2col.py`), and PyTorch's (oneDNN).

    python benchmarks/conv_formulations.py [--threads=N] [--repeats=20]

Each row is one layer shape (batch, input size, channels, kernel, stride, as the model runs it at
its config's batch size) with the milliseconds of a forward and backward pass (input and kernel
gradients) in each formulation, alternated in one process at the same thread count, and which
of XLA's two is faster: where the conv models' step time goes, and where im2col pays. XLA runs
with jvision's settings (`jvision/xla_cpu.py`: Eigen's convolutions), unless `XLA_FLAGS` sets
the option (`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`: XLA's
default, YNNPACK's).
"""

import argparse
import os
import sys
import time

import machine

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jvision  # noqa: E402, F401  (its XLA:CPU settings, before JAX's first computation)

# (model, batch, size, cin, cout, kernel, stride, padding): the layers as the models run them
# (SAME: PyTorch's k // 2; VALID: none).
LAYERS = [
    ("vae enc", 64, 28, 1, 16, 3, 2, "SAME"),
    ("vae enc", 64, 14, 16, 32, 3, 1, "SAME"),
    ("vae enc", 64, 14, 32, 64, 3, 2, "SAME"),
    ("vae dec (sub-pixel)", 64, 7, 64, 128, 3, 1, "SAME"),
    ("vae dec (sub-pixel)", 64, 14, 32, 16, 3, 1, "SAME"),
    ("vae dec (sub-pixel)", 64, 14, 16, 4, 3, 1, "SAME"),
    ("ssd base", 20, 32, 1, 16, 3, 1, "SAME"),
    ("ssd base", 20, 32, 16, 16, 3, 1, "SAME"),
    ("ssd base", 20, 16, 16, 32, 3, 1, "SAME"),
    ("ssd base", 20, 16, 32, 32, 3, 1, "SAME"),
    ("ssd base", 20, 8, 32, 64, 3, 1, "SAME"),
    ("ssd base", 20, 8, 64, 64, 3, 1, "SAME"),
    ("ssd head", 20, 16, 32, 90, 3, 1, "SAME"),
    ("ssd head", 20, 8, 64, 105, 3, 1, "SAME"),
    ("resnet stem", 64, 28, 1, 64, 7, 2, "SAME"),
    ("resnet layer1", 64, 7, 64, 64, 3, 1, "SAME"),
    ("patchvae heads", 64, 7, 64, 32, 3, 1, "SAME"),
    # The encoding detector's encoder: 64 search windows of 46 px, 32 exemplars of 23 px.
    ("encoding det, search", 64, 46, 1, 16, 3, 2, "VALID"),
    ("encoding det, search", 64, 22, 16, 32, 3, 1, "VALID"),
    ("encoding det, search", 64, 20, 32, 64, 3, 1, "VALID"),
    ("encoding det, search", 64, 18, 64, 128, 3, 1, "VALID"),
    ("encoding det, exemplar", 32, 23, 1, 16, 3, 2, "VALID"),
    ("encoding det, exemplar", 32, 11, 16, 32, 3, 1, "VALID"),
    ("encoding det, exemplar", 32, 9, 32, 64, 3, 1, "VALID"),
    ("encoding det, exemplar", 32, 7, 64, 128, 3, 1, "VALID"),
]


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def layer_times(
    batch, size, cin, cout, kernel, stride, padding, repeats
) -> tuple[float, float, float]:
    """Forward + backward milliseconds of XLA's convolution, im2col, and PyTorch's."""
    import im2col
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, cin, cout)) * 0.1, jnp.float32)

    def xla(x, w):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, w, (stride,) * 2, padding, dimension_numbers=dims)

    def step(fn):
        g = jnp.ones_like(fn(x, w))
        run = jax.jit(jax.grad(lambda x, w: jnp.vdot(fn(x, w), g), argnums=(0, 1)))
        return lambda: jax.block_until_ready(run(x, w))

    matmul = step(lambda x, w: im2col.conv_im2col(x, w, (stride,) * 2, padding))
    ours = step(xla)
    tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(np.asarray(w).transpose(3, 2, 0, 1).copy(), requires_grad=True)

    def pytorch():
        y = torch.nn.functional.conv2d(
            tx, tw, stride=stride, padding=kernel // 2 if padding == "SAME" else 0
        )
        torch.autograd.grad(y.sum(), (tx, tw))

    times = {"xla": [], "im2col": [], "torch": []}
    for _ in range(3):  # Alternated rounds: drift hits the three alike.
        times["xla"].append(median_ms(ours, repeats))
        times["im2col"].append(median_ms(matmul, repeats))
        times["torch"].append(median_ms(pytorch, repeats))
    return tuple(sorted(times[k])[1] for k in ("xla", "im2col", "torch"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="0: every CPU available")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    threads = machine.set_threads(args.threads)["threads"]  # Before jax and torch load.
    import torch

    torch.set_num_threads(threads)
    print(f"{threads} threads; ms per forward + backward (median of 3 alternated rounds)")
    print("| layer | B, H, Cin→Cout, k, stride, padding | XLA conv | im2col | PyTorch | faster |")
    print("|---|---|---|---|---|---|")
    for name, batch, size, cin, cout, kernel, stride, padding in LAYERS:
        shape = (batch, size, cin, cout, kernel, stride, padding)
        xla, im2col, pytorch = layer_times(*shape, args.repeats)
        best = "im2col" if im2col < xla else "conv"
        ratio = max(xla, im2col) / min(xla, im2col)
        print(
            f"| {name} | {batch}, {size}, {cin}→{cout}, {kernel}, {stride}, {padding} | "
            f"{xla:.2f} | {im2col:.2f} | {pytorch:.2f} | {best} ({ratio:.2f}×) |"
        )


if __name__ == "__main__":
    main()
