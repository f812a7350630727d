"""XLA:CPU against PyTorch on single 3×3 convolutions: forward, input gradient, weight gradient.

    python benchmarks/conv_gradients.py [--threads=N]

The layers are the VAE's (batch 64, 28×28 → 14×14 → 7×7) and the SSD's (batch 20, 32×32 and
16×16). Each row gives GFLOP/s (2·B·H'·W'·Cin·Cout·9 per pass) of XLA (NHWC) and of PyTorch
(NCHW, oneDNN), in one process, same thread count: where a conv model's step time goes.
"""

import argparse
import time

import machine

LAYERS = [  # (model, batch, size, cin, cout, stride)
    ("vae enc1", 64, 28, 1, 16, 2),
    ("vae enc2", 64, 14, 16, 32, 1),
    ("vae enc3", 64, 14, 32, 64, 2),
    ("vae dec up", 64, 7, 64, 128, 1),
    ("vae dec up", 64, 14, 32, 64, 1),
    ("ssd base", 20, 32, 16, 16, 1),
    ("ssd base", 20, 16, 32, 32, 1),
    ("ssd base", 20, 8, 64, 64, 1),
]


def median_ms(function, repeats: int = 20) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def row(batch: int, size: int, cin: int, cout: int, stride: int) -> tuple[list, list, int]:
    """Milliseconds of XLA's and PyTorch's forward, input and weight gradients, and the FLOPs."""
    import jax
    import jax.numpy as jnp
    import torch

    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.1

    def conv(x, w):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(
            x, w, (stride,) * 2, ((1, 1),) * 2, dimension_numbers=dims
        )

    y = conv(x, w)
    g = jnp.ones_like(y)
    flops = 2 * batch * y.shape[1] * y.shape[2] * cin * cout * 9
    forward = jax.jit(conv)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    xla = [
        median_ms(lambda: forward(x, w).block_until_ready()),
        median_ms(lambda: dx(x, w, g).block_until_ready()),
        median_ms(lambda: dw(x, w, g).block_until_ready()),
    ]
    tx = torch.randn(batch, cin, size, size, requires_grad=True)
    tw = (torch.randn(cout, cin, 3, 3) * 0.1).requires_grad_()

    def torch_conv():
        return torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1)

    tg = torch.ones_like(torch_conv())
    with torch.no_grad():
        torch_forward = median_ms(torch_conv)
    pytorch = [
        torch_forward,
        median_ms(lambda: torch.autograd.grad(torch_conv(), tx, tg)),
        median_ms(lambda: torch.autograd.grad(torch_conv(), tw, tg)),
    ]
    return xla, pytorch, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="0: every CPU available")
    args = parser.parse_args()
    threads = machine.set_threads(args.threads)["threads"]  # Before jax and torch load.
    import torch

    torch.set_num_threads(threads)
    print(f"{threads} threads; GFLOP/s of XLA / PyTorch")
    print("| layer | B, H, Cin→Cout, stride | forward | input gradient | weight gradient |")
    print("|---|---|---|---|---|")
    for name, batch, size, cin, cout, stride in LAYERS:
        xla, pytorch, flops = row(batch, size, cin, cout, stride)
        pairs = zip(xla, pytorch, strict=True)
        cells = " | ".join(f"{flops / a / 1e6:.0f} / {flops / b / 1e6:.0f}" for a, b in pairs)
        print(f"| {name} | {batch}, {size}, {cin}→{cout}, {stride} | {cells} |")


if __name__ == "__main__":
    main()
