"""Which XLA:CPU library runs what, compared inside one process: a config's train step compiled
once per setting, the settings taking turns.

    python benchmarks/compile_options.py --configs=vae_mnist,patchvae_mnist [--settings=...]
        [--rounds=8] [--steps=20]

A config is a file of configs/ by name, with its argument if any (`vae_mnist:tiny`).

XLA:CPU (jaxlib 0.10.2) hands some ops to YNNPACK (`ynn_fusion` in a compiled step's HLO): which
kinds is the debug option `xla_cpu_experimental_ynn_fusion_type`, given here per compilation
(`compiler_options`) rather than in `XLA_FLAGS`, so that every setting runs in the same process
and the settings, taking turns, share whatever drift the host has (separate starts of one
program differ more: docs/speed.md).

Each setting's step is compiled on the config's first batch (each with its own input pipeline
and state: the memory of one training run per setting) and takes 3 warm-up steps; the digest of
its state then says whether it computes the `jvision` row's bits ("same"). Then `--rounds`
rounds, each timing `--steps` steps of every setting in turn. Prints the machine and the
process's `XLA_FLAGS` (what the `jvision` row compiles with), then a Markdown table: the
compiled step's YNNPACK ops, the median ms/step over the rounds (min-max), the speed-up over
the `jvision` row, the process's CPU time / wall time while that setting ran, and the bits.
Run it alone.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jvision  # noqa: E402, F401  (jvision's XLA:CPU settings, before JAX's first computation)

OPTION = "xla_cpu_experimental_ynn_fusion_type"


def ynnpack(*kinds: str) -> dict:
    """The compiler option that gives YNNPACK these kinds of ops, and no other."""
    return {OPTION: ",".join(f"LIBRARY_FUSION_TYPE_{kind.upper()}" for kind in kinds)}


# name: (compiler options, what YNNPACK runs). `jvision` compiles with none: the process's
# settings (jvision/xla_cpu.py, unless `XLA_FLAGS` sets the option), the row the others are
# timed against.
SETTINGS = {
    "jvision": ({}, "what `XLA_FLAGS` gives (jvision's setting: matmuls and reductions)"),
    "xla_defaults": (
        ynnpack("individual_dot", "individual_convolution", "reduce"),
        "matmuls, convolutions and reductions (XLA's defaults)",
    ),
    "xla_reductions": (ynnpack("individual_dot"), "matmuls; reductions in XLA's own loops"),
    "eigen_dots": (ynnpack("reduce"), "reductions; matmuls in Eigen"),
    "no_ynnpack": (ynnpack(), "nothing: matmuls in Eigen, reductions in XLA's loops"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="vae_mnist,patchvae_mnist")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    names = list(dict.fromkeys(args.settings.split(",")))
    if min(args.rounds, args.steps) < 1:
        parser.error(f"--rounds and --steps must be at least 1, not {min(args.rounds, args.steps)}")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"no setting {', '.join(unknown)}; the settings: {', '.join(SETTINGS)}")
    names = ["jvision"] + [name for name in names if name != "jvision"]  # The reference.

    sys.path.insert(0, HERE)
    from jvision_step import compile_step, config_by_name, digest
    from machine import ThreadMeter, cpu_info

    from jvision.errors import UserError

    try:
        configs = {name: config_by_name(name) for name in args.configs.split(",")}
    except UserError as error:
        parser.error(str(error))

    info = cpu_info()
    print(
        f"# CPU {info['cpu']} ({', '.join(info['cpu_flags'])}), {os.cpu_count()} logical CPUs; "
        f"{args.rounds} rounds of {args.steps} steps; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}",
        flush=True,
    )
    print("| config | setting | YNNPACK ops | ms/step (min-max) | vs jvision | CPU/wall | bits |")
    print("|---|---|---|---|---|---|---|")
    for config_name, config in configs.items():
        steps, digests, ynn_ops = {}, {}, {}
        for setting in names:
            steps[setting] = compile_step(config, SETTINGS[setting][0] or None)
            steps[setting].run(0, 3)
            digests[setting] = digest(steps[setting].state)
            ynn_ops[setting] = steps[setting].compiled.as_text().count('"__ynn_fusion"')
        times = {setting: [] for setting in names}
        meters = {setting: ThreadMeter() for setting in names}
        for _ in range(args.rounds):
            for setting in names:
                with meters[setting]:
                    start = time.perf_counter()
                    steps[setting].run(3, args.steps)
                    times[setting].append((time.perf_counter() - start) / args.steps * 1e3)
        reference = statistics.median(times["jvision"])
        for setting in names:
            ms = times[setting]
            median = statistics.median(ms)
            same = "same" if digests[setting] == digests["jvision"] else "differ"
            print(
                f"| `{config_name}` | {setting} | {ynn_ops[setting]} | "
                f"{median:.1f} ({min(ms):.1f}-{max(ms):.1f}) | "
                f"{reference / median:.2f}× | {meters[setting].cpu_per_wall():.2f} | {same} |",
                flush=True,
            )
    print()
    for setting in names:
        options, what = SETTINGS[setting]
        value = f" (`{OPTION}={options[OPTION]}`)" if options else ""
        print(f"- {setting}: YNNPACK runs {what}{value}")


if __name__ == "__main__":
    main()
