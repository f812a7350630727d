"""How many cores XLA:CPU's convolutions keep busy: YNNPACK's (XLA's default) against Eigen's
(jvision's, `jvision/xla_cpu.py`), on single layers at the shapes the models run.

    python benchmarks/conv_threads.py [--repeats=50]

Each setting runs in its own process (XLA reads its flags once); each layer's forward pass and its
two gradients are timed over `--repeats` calls, with the process's CPU time / wall time
(`machine.ThreadMeter`). Prints the CPU, then a Markdown table. Run it alone: it times the CPU.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from jvision import xla_cpu  # noqa: E402

# name: XLA_FLAGS. XLA's defaults, and the same with jvision's convolution setting.
ONE_TEMP_BUFFER = "--xla_multiheap_size_constraint_per_heap=-1"
SETTINGS = {"YNNPACK": xla_cpu.XLA_DEFAULTS, "Eigen": xla_cpu.flags(ONE_TEMP_BUFFER)}
LAYERS = [  # (where, input NHWC, kernel HWIO, stride)
    ("VAE encoder", (64, 14, 14, 16), (3, 3, 16, 32), 1),
    ("VAE encoder", (64, 14, 14, 32), (3, 3, 32, 64), 2),
    ("VAE decoder", (64, 7, 7, 64), (3, 3, 64, 128), 1),
    ("SSD base", (20, 32, 32, 16), (3, 3, 16, 16), 1),
    ("encoding detector search", (64, 20, 20, 32), (3, 3, 32, 64), 1),
    ("ResNet-like", (64, 28, 28, 64), (3, 3, 64, 64), 1),
]


def worker(repeats: int) -> list[dict]:
    sys.path.insert(0, HERE)
    import jax
    import numpy as np
    from machine import ThreadMeter

    rows = []
    for _, x_shape, w_shape, stride in LAYERS:

        def convolve(x, w, stride=stride):
            return jax.lax.conv_general_dilated(
                x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        rng = np.random.default_rng(0)
        x = jax.numpy.asarray(rng.random(x_shape, np.float32))
        w = jax.numpy.asarray(rng.random(w_shape, np.float32))
        grads = jax.grad(lambda x, w: convolve(x, w).sum(), argnums=(0, 1))
        for fn in (jax.jit(convolve), jax.jit(grads)):  # The table's two passes, in order.
            jax.block_until_ready(fn(x, w))
            with ThreadMeter() as meter:
                start = time.perf_counter()
                for _ in range(repeats):
                    out = fn(x, w)
                jax.block_until_ready(out)
                ms = (time.perf_counter() - start) / repeats * 1e3
            rows.append({"ms": ms, "cpu_per_wall": meter.cpu_per_wall()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeats)))
        return
    sys.path.insert(0, HERE)
    from machine import cpu_info

    results = {}
    for name, flags in SETTINGS.items():
        env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
        command = [sys.executable, __file__, "--worker", f"--repeats={args.repeats}"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    info = cpu_info()
    print(f"# CPU {info['cpu']} ({', '.join(info['cpu_flags'])}), {os.cpu_count()} logical CPUs")
    print("| layer | input, kernel, stride | pass | YNNPACK ms (CPU/wall) | Eigen ms (CPU/wall) |")
    print("|---|---|---|---|---|")
    passes = [(layer, p) for layer in LAYERS for p in ("forward", "both gradients")]
    for i, ((where, x_shape, w_shape, stride), pass_) in enumerate(passes):
        cells = [f"{r[i]['ms']:.2f} ({r[i]['cpu_per_wall']:.2f})" for r in results.values()]
        shapes = f"{'×'.join(map(str, x_shape))}, {'×'.join(map(str, w_shape))}, {stride}"
        print(f"| {where} | {shapes} | {pass_} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
