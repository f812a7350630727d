"""What keeps the CPU's cores busy: jvision's train step under each of XLA's CPU settings.

    python benchmarks/cpu_levers.py --configs=vae_mnist,ssd_mnist [--levers=baseline,...]
        [--rounds=2] [--steps=10]

A config is a file of configs/ by name, with its argument if any (`vae_mnist:tiny`).

Each lever is an environment a fresh process starts in (`LEVERS`: XLA flags, malloc settings,
thread counts, two CPU devices that split the batch); every (config, lever) pair is timed in its
own process, the levers taking turns within each round so that the host's drift spreads over all
of them. A process compiles the config's step (`jvision_step.compile_step`), takes 5 warm-up
steps, then `--steps` timed ones on one batch, and reports ms per step, the page faults it took
per step, its CPU time / wall time and other processes' CPU time on the same cores
(`machine.ThreadMeter`), and a digest of the parameters after the steps: "same bits" says
whether the lever computes what the baseline computes. `baseline` is what runs without
jvision's settings (XLA's defaults: the option jvision sets, set to XLA's value; glibc's malloc
defaults: `GLIBC_TUNABLES` set, empty), `jvision` what jvision runs with (`jvision/xla_cpu.py`,
`jvision/host_memory.py`); `one_temp_buffer`, `small_top_pad`, `one_arena` and
`sync_dispatch` are jvision's settings and one change, every other lever is the baseline and one
change.

Prints the machine, then a Markdown table: the median over rounds of ms/step (and min-max), the
speed-up over the baseline, page faults per step, CPU/wall, the other processes' cores, and the
bits. Run it alone.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# What XLA does when nothing is set (jvision, imported, adds its own settings unless the option
# is set): YNNPACK convolutions, one temp buffer.
from jvision import host_memory, xla_cpu  # noqa: E402
from jvision.xla_cpu import XLA_DEFAULTS  # noqa: E402

# glibc's malloc as it comes: jvision leaves a user's GLIBC_TUNABLES, even empty, alone.
GLIBC_DEFAULTS = {"GLIBC_TUNABLES": ""}
# JAX options a worker sets before its first computation (`name=value,...`; JAX reads no
# environment variable for them).
JAX_CONFIG = "CPU_LEVERS_JAX_CONFIG"
# What a lever says about malloc, and nothing else: the caller's own settings are not passed on.
MALLOC_ENVIRONMENT = (*host_memory.USER_SETTINGS, "MALLOC_ARENA_MAX")
# XLA's own scratch, one temp buffer: jvision's settings less the pieces.
PIECES = "xla_multiheap_size_constraint_per_heap"
ONE_TEMP_BUFFER = f"--{PIECES}={xla_cpu.OPTIONS[PIECES][1]}"
# jvision's malloc settings less its top pad (glibc's, 128 KiB), as glibc's own variables.
SMALL_TOP_PAD = {**host_memory.ENVIRONMENT, "MALLOC_TOP_PAD_": str(128 << 10)}

# name: (environment variables, XLA_FLAGS, what it is). `jvision`, `malloc`, `one_temp_buffer`,
# `small_top_pad`, `one_arena` and `sync_dispatch` keep jvision's malloc settings (or all but
# one); every other lever starts from glibc's defaults.
LEVERS = {
    "baseline": (GLIBC_DEFAULTS, XLA_DEFAULTS, "one CPU device, XLA's and glibc's defaults"),
    "jvision": (
        {},
        "",
        "jvision's settings: convolutions in XLA:CPU's Eigen kernels instead of YNNPACK and the "
        "step's scratch in pieces of at most 56 MiB (jvision/xla_cpu.py), malloc keeping each "
        "step's scratch memory mapped (jvision/host_memory.py)",
    ),
    "eigen_convolutions": (
        GLIBC_DEFAULTS,
        ONE_TEMP_BUFFER,
        "jvision's convolution setting alone (jvision/xla_cpu.py), glibc's malloc defaults",
    ),
    "malloc": (
        {},
        XLA_DEFAULTS,
        "jvision's malloc settings alone (jvision/host_memory.py), XLA's defaults",
    ),
    "one_temp_buffer": (
        {},
        ONE_TEMP_BUFFER,
        "jvision's settings, but the step's scratch in one buffer, as XLA makes it",
    ),
    "small_top_pad": (
        SMALL_TOP_PAD,
        "",
        "jvision's settings, but glibc's own top pad (a thread's emptied extra heap unmapped)",
    ),
    "one_arena": (
        {"MALLOC_ARENA_MAX": "1"},
        "",
        "jvision's settings, and every thread allocating from glibc's main heap "
        "(which has no 64 MiB limit per heap, and one lock)",
    ),
    "sync_dispatch": (
        {JAX_CONFIG: "jax_cpu_enable_async_dispatch=false"},
        "",
        "jvision's settings, and each step run on the Python thread that calls it "
        "(its scratch memory then from the main heap)",
    ),
    "two_devices": (
        GLIBC_DEFAULTS,
        XLA_DEFAULTS + " --xla_force_host_platform_device_count=2",
        "two CPU devices: the batch split across them, each half's program on its own thread",
    ),
    "legacy_emitters": (
        GLIBC_DEFAULTS,
        XLA_DEFAULTS + " --xla_cpu_use_fusion_emitters=false",
        "XLA:CPU's older loop emitters for fusions",
    ),
    "concurrency_scheduler": (
        GLIBC_DEFAULTS,
        XLA_DEFAULTS + " --xla_cpu_enable_concurrency_optimized_scheduler=true",
        "the scheduler that orders independent ops to run concurrently",
    ),
    "xnnpack": (
        GLIBC_DEFAULTS,
        XLA_DEFAULTS + " --xla_cpu_use_xnnpack=true",
        "XNNPACK for dots and convolutions",
    ),
    "onednn": (
        GLIBC_DEFAULTS,
        XLA_DEFAULTS + " --xla_cpu_use_onednn=true",
        "oneDNN for dots and convolutions",
    ),
    "threads_3": (
        {**GLIBC_DEFAULTS, "PJRT_NPROC": "3"},
        XLA_DEFAULTS,
        "an intra-op pool of 3 threads on 2 cores",
    ),
}


def worker(config_name: str, steps: int) -> dict:
    sys.path.insert(0, HERE)
    import resource

    import jax
    from jvision_step import compile_step, config_by_name, digest
    from machine import ThreadMeter

    for option in filter(None, os.environ.get(JAX_CONFIG, "").split(",")):
        name, value = option.split("=")
        jax.config.update(name, {"true": True, "false": False}.get(value, value))

    step = compile_step(config_by_name(config_name))
    step.run(0, 5)  # Each worker thread's malloc arena warm too.
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with ThreadMeter() as meter:
        start = time.perf_counter()
        step.run(5, steps)
        seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "ms": seconds / steps * 1e3,
        "faults": faults / steps,
        "cpu_per_wall": meter.cpu_per_wall(),
        "others_per_wall": meter.others_per_wall(),
        "digest": digest(step.state),
        "devices": jax.device_count(),
        "compile_s": step.compile_s,
    }


def run_lever(config_name: str, lever: str, steps: int) -> dict:
    variables, flags, _ = LEVERS[lever]
    inherited = {k: v for k, v in os.environ.items() if k not in (*MALLOC_ENVIRONMENT, JAX_CONFIG)}
    env = {**inherited, **variables}
    env.pop("JAX_PLATFORMS", None)
    env["XLA_FLAGS"] = flags
    command = [sys.executable, __file__, f"--worker={config_name}", f"--steps={steps}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="vae_mnist,ssd_mnist,patchvae_mnist")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    sys.path.insert(0, HERE)
    from machine import cpu_info

    configs, levers = args.configs.split(","), args.levers.split(",")
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        parser.error(f"no lever {', '.join(unknown)}; the levers: {', '.join(LEVERS)}")
    info = cpu_info()
    print(
        f"# CPU {info['cpu']} ({', '.join(info['cpu_flags'])}), {os.cpu_count()} logical CPUs; "
        f"{args.rounds} rounds of {args.steps} steps",
        flush=True,
    )
    runs = {(c, lever): [] for c in configs for lever in levers}
    for _ in range(args.rounds):
        for config_name in configs:
            for lever in levers:
                runs[config_name, lever].append(run_lever(config_name, lever, args.steps))
                print(f"{config_name} {lever}: {runs[config_name, lever][-1]}", file=sys.stderr)
    print(
        "| config | lever | ms/step (min-max) | vs baseline | page faults/step | CPU/wall "
        "| others' cores | bits |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for config_name in configs:
        base = [r for r in runs.get((config_name, "baseline"), []) if "ms" in r]
        base_ms = statistics.median(r["ms"] for r in base) if base else None
        for lever in levers:
            good = [r for r in runs[config_name, lever] if "ms" in r]
            if not good:
                error = runs[config_name, lever][0]["error"]
                print(f"| `{config_name}` | {lever} | failed: {error} | | | | | |")
                continue
            ms = [r["ms"] for r in good]
            median = statistics.median(ms)
            ratio = f"{base_ms / median:.2f}×" if base_ms else "—"
            same = (
                "—" if not base else "same" if good[0]["digest"] == base[0]["digest"] else "differ"
            )
            cpu = statistics.median(r["cpu_per_wall"] for r in good)
            others = max(r["others_per_wall"] for r in good)
            faults = statistics.median(r["faults"] for r in good)
            print(
                f"| `{config_name}` | {lever} | {median:.1f} ({min(ms):.1f}-{max(ms):.1f}) | "
                f"{ratio} | {faults:,.0f} | {cpu:.2f} | {others:.2f} | {same} |"
            )
    print()
    for lever in levers:
        variables, flags, what = LEVERS[lever]
        if lever != "baseline":  # The baseline's settings are shown once, on its own line.
            flags = flags.replace(XLA_DEFAULTS, "").strip()
            variables = {k: v for k, v in variables.items() if GLIBC_DEFAULTS.get(k) != v}
        setting = " ".join([*(f"{k}={v}" for k, v in variables.items()), flags]).strip()
        print(f"- {lever}: {what}" + (f" (`{setting}`)" if setting else ""))


if __name__ == "__main__":
    main()
