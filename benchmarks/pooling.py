"""Max-pooling on XLA:CPU: `lax.reduce_window` against `jvision.ops.pooling.max_pool`, at the
shapes the models pool, forward and forward with the input's gradient.

    python benchmarks/pooling.py [--repeats=50] [--rounds=3]

The two take turns within each round; a cell is the median over rounds of ms per call. The last
column says whether the two gave the same bits (output and gradient): where windows overlap, an
input that is the maximum of three or four windows sums their gradients in another order, so the
last bits of those sums may differ; disjoint windows give the same bits. Run it alone: it times
the CPU.
"""

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jvision.ops import pooling  # noqa: E402

POOLS = [  # (where, input NHWC, window, stride, padding)
    ("ResNet stem (PatchVAE, transfer)", (64, 14, 14, 64), 3, 2, 1),
    ("SSD base, first", (20, 32, 32, 16), 2, 2, 0),
    ("SSD base, second", (20, 16, 16, 32), 2, 2, 0),
]


def reduce_window(x, window, stride, padding):
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    return lax.reduce_window(x, -np.inf, lax.max, dims, strides, pads)


def passes(pool, window, stride, padding):
    """(forward, forward with the input's gradient), jitted. The ReLU before the pool gives the
    ties a trained network has (zeros)."""

    def forward(x):
        return pool(jax.nn.relu(x), window, stride, padding)

    def gradient(x, cotangent):
        out, back = jax.vjp(forward, x)
        return out, back(cotangent)[0]

    return jax.jit(forward), jax.jit(gradient)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from correlation import timed
    from machine import cpu_info

    info = cpu_info()
    print(f"# CPU {info['cpu']} ({', '.join(info['cpu_flags'])}), {os.cpu_count()} logical CPUs")
    print(
        "| pool | input, window, stride, padding | pass | reduce_window ms | ops.pooling ms "
        "| faster | same bits |"
    )
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for where, shape, window, stride, padding in POOLS:
        x = jax.numpy.asarray(rng.normal(size=shape).astype(np.float32))
        ours = passes(pooling.max_pool, window, stride, padding)
        theirs = passes(reduce_window, window, stride, padding)
        cotangent = jax.numpy.asarray(rng.normal(size=ours[0](x).shape).astype(np.float32))
        for index, name in enumerate(("forward", "with gradient")):
            call_args = (x,) if index == 0 else (x, cotangent)
            times = {"theirs": [], "ours": []}
            for _ in range(args.rounds):
                times["theirs"].append(timed(theirs[index], *call_args, repeats=args.repeats))
                times["ours"].append(timed(ours[index], *call_args, repeats=args.repeats))
            base, new = (statistics.median(times[k]) for k in ("theirs", "ours"))
            same = all(
                np.array_equal(a, b)
                for a, b in zip(
                    jax.tree.leaves(theirs[index](*call_args)),
                    jax.tree.leaves(ours[index](*call_args)),
                    strict=True,
                )
            )
            geometry = f"{'×'.join(map(str, shape))}, {window}, {stride}, {padding}"
            print(
                f"| {where} | {geometry} | {name} | {base:.3f} | {new:.3f} | {base / new:.2f}× "
                f"| {'yes' if same else 'no'} |"
            )


if __name__ == "__main__":
    main()
