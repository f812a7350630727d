"""jvision's train step against its PyTorch twin, eager and torch.compile'd, in one process.

    python benchmarks/compare.py [--configs=vae_mnist,ssd_mnist,...] [--rounds=3] [--steps=20]
        [--warmup=3] [--threads=N] [--no_compile] [--markdown=PATH] [--ssd_steps_to_target=4000]

`--configs` takes config names (`configs/<name>.py`), optionally with the config's argument
(`vae_mnist:tiny`), or paths (`configs/x.py:tiny`); the default is every config with a PyTorch twin
(`benchmarks/torch_models.CONFIGS`), so a new twin (e.g. the encoding detector's) adds its row.

For each config (benchmarks/timing.py): jvision's jitted train step and its twin of the same
architecture, loss and optimizer (`benchmarks/torch_models`), loaded with jvision's initial weights,
on the same real batch from jvision's Grain pipeline. After `--warmup` steps of each, rounds
alternate jvision / PyTorch eager / torch.compile, `--steps` steps each, `--rounds` times; a
framework's ms/step is the median over rounds of (round wall time / steps), the spread the min-max
over rounds. torch.compile compiles the twin's loss (forward and backward) and optimizer step.

Both frameworks get the same thread count (`--threads`, default: every core this process may run
on), set before either is imported, and each run checks which threads did the work and how many
cores' worth of CPU time each framework got (benchmarks/machine.py).

Columns (also in the footnotes written with the table):
- ms/step per framework, and jvision's speed-ups: PyTorch ms / jvision ms.
- compile: jvision's `step.lower(...).compile()` wall time; torch.compile's first call plus every
  warm-up call that compiled again; frames compiled during the timed rounds are counted in the
  JSON and a footnote (benchmarks/timing.py).
- FLOPs: XLA's count of jvision's step (`compiled.cost_analysis()`); both frameworks do the same
  work, so GFLOP/s = that count / each framework's step time, and "% of peak" compares it with a
  float32 matmul measured in the same run (2048³ on CPU, 8192³ on a GPU; the faster of JAX and
  PyTorch, at the same thread count, measured at the start and the end: the roofline's ceiling).
- peak memory: for jvision, XLA's buffer assignment of the compiled step; for PyTorch on CPU, the
  tensors alive when the step starts plus the peak its CPU allocator reached during one step;
  on a GPU, `torch.cuda.max_memory_allocated()` (benchmarks/measure.py).
- pipeline: batches/s of jvision's Grain training iterator (`next(it)`, as step_time.py) against
  the batches/s the jvision step consumes (1000 / ms per step).
- Extras of one config, in the JSON and a footnote (benchmarks/extras.py): SSD time to accuracy
  (`ssd_mnist`): `--ssd_steps_to_target` × jvision's ms/step against the tutorial's schedule ×
  PyTorch eager's, train steps only.

Output: the machine (CPU model and vector extensions from /proc/cpuinfo, or the GPU's name), the
thread count and date, the Markdown table (one row per config) with its footnotes, and one JSON
line with every number. `--markdown=PATH` also writes the table and footnotes to PATH.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from typing import TYPE_CHECKING

from absl import app, flags, logging

if TYPE_CHECKING:
    import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # Run as a script, only benchmarks/ is on the path.
    sys.path.insert(0, ROOT)

# None of these imports jax or torch: set_threads must run first.
from benchmarks import extras, machine, table, timing  # noqa: E402
from benchmarks.measure import first_line  # noqa: E402

_CONFIGS = flags.DEFINE_list(
    "configs",
    [],
    "Configs: names in configs/ (`vae_mnist`, `vae_mnist:tiny`) or paths (`configs/x.py:arg`). "
    "Default: every config with a PyTorch twin (benchmarks/torch_models.CONFIGS).",
)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (jvision / eager / compiled).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per framework per round.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps of each framework before the rounds.")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "Threads for both frameworks (0: every CPU this process may run on)."
)
_NO_COMPILE = flags.DEFINE_boolean("no_compile", False, "Skip torch.compile.")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "Compute dtype of every row: jvision's model.dtype; PyTorch autocasts to it.",
)
_PLACEMENT = flags.DEFINE_enum(
    "placement", "auto", ["auto", "host", "device"], "jvision's data.placement for every row."
)
_MARKDOWN = flags.DEFINE_string("markdown", None, "Also write the table and footnotes here.")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 100, "Timed input batches.")
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 0, "Size of the peak-measuring matmul (0: 2048 on CPU, 8192 on a GPU)."
)
_SSD_STEPS = flags.DEFINE_integer(
    "ssd_steps_to_target",
    extras.SSD_STEPS_TO_TARGET,
    f"jvision's train steps to reach the tutorial's mAP {extras.SSD_TARGET_MAP} "
    f"(default: {extras.SSD_STEPS_SOURCE})",
)


def parse_args() -> timing.Args:
    if _ROUNDS.value < 1 or _STEPS.value < 1:
        raise app.UsageError("--rounds and --steps must be at least 1")
    return timing.Args(
        rounds=_ROUNDS.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
        no_compile=_NO_COMPILE.value,
        dtype=_DTYPE.value,
        placement=_PLACEMENT.value,
        pipeline_batches=_PIPELINE_BATCHES.value,
        ssd_steps_to_target=_SSD_STEPS.value,
        ssd_steps_source=(
            extras.SSD_STEPS_SOURCE
            if _SSD_STEPS.value == _SSD_STEPS.default
            else "--ssd_steps_to_target (given on the command line)"
        ),
    )


def time_config(spec: str, device: torch.device, args: timing.Args) -> dict:
    """One config's row; a config that fails gets an `error` row rather than ending the run."""
    import torch
    from torch._dynamo.utils import counters

    print(f"# {timing.config_label(spec)} ...", flush=True)
    try:
        result = timing.compare_config(spec, device, args)
    except Exception as error:
        traceback.print_exc()
        result = {"config": timing.config_label(spec), "error": first_line(error)}
    torch._dynamo.reset()  # Frees the compiled graphs; compiled_frames() counts afresh.
    counters.clear()
    gc.collect()
    summary = {
        k: round(v, 2) if isinstance(v, float) else v
        for k, v in result.items()
        if k in ("jvision_ms", "eager_ms", "compiled_ms", "error", "torch_compile_error")
    }
    print(f"#   {summary}", flush=True)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # create_state logs a parameter table at INFO.
    args = parse_args()
    threads = machine.set_threads(_THREADS.value)

    import jax
    import torch

    torch.set_num_threads(threads["threads"])
    torch.set_num_interop_threads(1)
    from benchmarks import torch_models

    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        # XLA's default precision runs float32 dots and convolutions as TF32 on NVIDIA GPUs
        # (Ampere and later); PyTorch's default does so for convolutions only. Match XLA.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if jax.device_count() != 1 and not gpu:
        print(f"warning: {jax.device_count()} JAX devices; comparing on all", file=sys.stderr)

    info = machine.describe(threads, gpu)
    print(f"# {info['device_line']}")
    print(
        f"# threads: {threads['threads']} (XLA PJRT_NPROC={os.environ['PJRT_NPROC']}, torch "
        f"{info['torch_threads']} intra-op + {info['torch_interop_threads']} inter-op); "
        f"{info['date']}; jax {info['jax']}, torch {info['torch']}",
        flush=True,
    )
    size = _MATMUL_SIZE.value or (8192 if gpu else 2048)
    start_peak = machine.matmul_peak(device, size)
    print(
        f"# float32 {size}³ matmul: JAX {start_peak['jax_gflops']:.0f} GFLOP/s, PyTorch "
        f"{start_peak['torch_gflops']:.0f} GFLOP/s",
        flush=True,
    )

    specs = _CONFIGS.value or list(torch_models.CONFIGS)
    results = [time_config(spec, device, args) for spec in specs]

    info["loadavg_end"] = machine.loadavg()
    info["matmul"] = machine.peak_summary(start_peak, machine.matmul_peak(device, size))
    markdown = table.markdown(results, info, args)
    print()
    print(markdown)
    # default=str: anything JSON has no type for (a NumPy scalar, a path) is written as text.
    print(json.dumps({"machine": info, "results": results}, default=str))
    if _MARKDOWN.value:
        with open(_MARKDOWN.value, "w") as f:
            f.write(markdown)


if __name__ == "__main__":
    app.run(main)
