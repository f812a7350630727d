"""Whether the host runs slower at times: a config's train step timed, then a standalone
convolution and NumPy's matmul, then the step again, in one process.

    python benchmarks/host_drift.py [--config=vae_mnist] [--steps=40]

Prints one line: ms per step, ms per 3×3 convolution (XLA, 64×28×28×32 → 64 channels), ms per
512² float32 matmul (NumPy: OpenBLAS, its own threads and memory), ms per step again. Run it in
fresh processes, alternated with another environment, to see how often and by how much the host
slows whatever the settings (docs/speed.md, "Slow stretches").
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def per_call_ms(function, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        result = function()
    getattr(result, "block_until_ready", lambda: None)()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vae_mnist")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, not {args.steps}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jvision_step import compile_step, config_by_name

    from jvision.errors import UserError

    try:
        config = config_by_name(args.config)
    except UserError as error:
        parser.error(str(error))
    step = compile_step(config)
    step.run(0, 5)
    first = per_call_ms(lambda: step.run(5, args.steps), 1) / args.steps
    images, kernel = jnp.ones((64, 28, 28, 32)), jnp.ones((3, 3, 32, 64))
    convolve = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ).sum()
    )
    convolve(images, kernel).block_until_ready()
    convolution = per_call_ms(lambda: convolve(images, kernel), 50)
    matrix = np.ones((512, 512), np.float32)
    matmul = per_call_ms(lambda: matrix @ matrix, 50)
    again = per_call_ms(lambda: step.run(5 + args.steps, args.steps), 1) / args.steps
    print(f"step {first:.1f} conv {convolution:.2f} numpy {matmul:.2f} step-again {again:.1f}")


if __name__ == "__main__":
    main()
