"""Gradient accumulation's cost and saving: for a config, each k in `--accumulate` and each way
of running the microbatches (`grad_accum_loop`: a `lax.scan` loop, or unrolled), the compiled
train step's memory (XLA's `memory_analysis()`: its temporary buffers, the peak of what the step
allocates beyond its inputs and outputs) and its time per optimizer update.

    python benchmarks/grad_accum.py --config=configs/vae_mnist.py --accumulate=1,2,4,8

Prints a Markdown table (docs/speed.md records one). Run it alone: it times the CPU.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.jvision_step import compile_step  # noqa: E402
from jvision import config_files  # noqa: E402


def measure(config_path: str, accumulate: int, loop: str, updates: int) -> dict:
    config = config_files.load(config_path)
    config.grad_accum_steps, config.grad_accum_loop = accumulate, loop
    step = compile_step(config)
    memory = step.compiled.memory_analysis()
    step.run(0, 2)  # Warm.
    start = time.perf_counter()
    step.run(2, updates)
    seconds = (time.perf_counter() - start) / updates
    return {
        "k": accumulate,
        "loop": loop if accumulate > 1 else "—",
        "microbatch": config.batch_size // accumulate,
        "temp_mib": memory.temp_size_in_bytes / 2**20,
        "ms": 1000 * seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/vae_mnist.py")
    parser.add_argument("--accumulate", default="1,2,4,8")
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for k in map(int, args.accumulate.split(",")):
        for loop in ("scan", "unrolled") if k > 1 else ("scan",):
            rows.append(measure(args.config, k, loop, args.updates))
    print("| grad_accum_steps | loop | microbatch | temporary memory (MiB) | ms per update |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['k']} | {row['loop']} | {row['microbatch']} | {row['temp_mib']:.1f} | "
            f"{row['ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
