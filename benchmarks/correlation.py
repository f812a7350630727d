"""Where FFT correlation beats the direct (grouped-convolution) one: forward (detection) and
forward+backward (training), over search-map sizes, on this machine's default device.

    python benchmarks/correlation.py [--batch=16] [--channels=128] [--exemplar=5,12]

Prints one Markdown row per (exemplar, search) size: milliseconds per call of each method and
which wins. pytlib's point for FFTs is large search images (whole KITTI frames).
"""

import argparse
import time

import jax

from jvision.ops import correlation


def timed(function, *args, repeats: int = 5) -> float:
    jax.block_until_ready(function(*args))  # Compile and warm up.
    start = time.perf_counter()
    for _ in range(repeats):
        result = function(*args)
    jax.block_until_ready(result)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--exemplar", default="5,12", help="Exemplar map sides.")
    parser.add_argument("--search", default="12,20,28,48,96", help="Search map sides.")
    args = parser.parse_args()
    key = jax.random.key(0)
    print(f"device: {jax.devices()[0].device_kind}, batch {args.batch}, {args.channels} channels")
    print("| exemplar | search | direct fwd ms | fft fwd ms | direct fwd+bwd ms | fft fwd+bwd ms |")
    print("|---|---|---|---|---|---|")
    for h in map(int, args.exemplar.split(",")):
        for size in map(int, args.search.split(",")):
            if size < h:
                continue
            search = jax.random.normal(key, (args.batch, size, size, args.channels))
            exemplar = jax.random.normal(key, (args.batch, h, h, args.channels))
            row = []
            for grad in (False, True):
                for method in correlation.METHODS:

                    def loss(s, e, method=method):
                        return correlation.correlate(s, e, method).sum()

                    function = jax.jit(jax.grad(loss, argnums=(0, 1)) if grad else loss)
                    row.append(timed(function, search, exemplar))
            cells = " | ".join(f"{ms:.2f}" for ms in row)
            print(f"| {h}×{h} | {size}×{size} | {cells} |")


if __name__ == "__main__":
    main()
