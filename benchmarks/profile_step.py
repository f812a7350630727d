"""Where a config's train step spends its time: the XLA ops of a JAX profiler trace, longest first.

    python benchmarks/profile_step.py --config=configs/patchvae_mnist.py [--steps=5] [--top=25]
        [--trace_dir=DIR] [--config.KEY=V]

Compiles the step as step_time.py does, takes 3 warm-up steps, times `--steps` steps, then traces
as many (`jax.profiler.trace`; the trace stays in `--trace_dir`, for TensorBoard or Perfetto)
and prints each XLA op's traced time per step, with its output shape and the JAX operation it
came from (the compiled HLO's metadata). On the CPU, ops that XLA hands to a library running on
its own threads (Eigen's convolutions) are traced while they are dispatched, not while they run:
their rows undercount them, and the ops around them may run slower beside them. The times are
for finding what to look at, then to time on its own.
"""

import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
from absl import app, flags
from jvision_step import compile_step  # benchmarks/, this script's directory
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed, then traced, train steps.")
_TOP = flags.DEFINE_integer("top", 25, "Ops to print.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Where the trace goes (a new temporary dir).")

# Trace events that are not XLA ops: the runtime, the dispatch, Python.
_NOT_OPS = re.compile(r"^\$|Thunk|Pjit|PjRt|Execute|Wait|Threadpool|ParseArguments|Python|Handle")


def op_times(trace_dir: str, steps: int) -> collections.Counter:
    """{op name: traced ms per step} from the trace in `trace_dir`."""
    (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as file:
        events = json.load(file)["traceEvents"]
    times = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not _NOT_OPS.search(event["name"]):
            times[event["name"]] += event["dur"] / 1e3 / steps
    return times


def describe(hlo: str, op: str) -> tuple[str, str]:
    """(output shape, JAX operation) of `op` in the compiled HLO text, or empty strings."""
    line = re.search(rf"^\s*%{re.escape(op)} = (\S+) .*$", hlo, re.MULTILINE)
    if not line:
        return "", ""
    source = re.search(r'op_name="([^"]+)"', line.group(0))
    shape = re.match(r"\(?(\w+\[[\d,]*\])", line.group(1)).group(1)
    if line.group(1).startswith("("):  # A tuple: its first element.
        shape = f"({shape}, …)"
    return shape, source.group(1) if source else ""


def main(argv):
    del argv
    step = compile_step(_CONFIG.value)
    steps = _STEPS.value
    step.run(0, 3)
    start = time.perf_counter()
    step.run(3, steps)
    step_ms = (time.perf_counter() - start) / steps * 1e3
    trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="jvision_trace_")
    with jax.profiler.trace(trace_dir):
        step.run(3 + steps, steps)
    times = op_times(trace_dir, steps)
    hlo = step.compiled.as_text()
    print(f"{step_ms:.1f} ms per step untraced; XLA ops traced: {sum(times.values()):.1f} ms/step")
    print(f"trace: {trace_dir}")
    print("| op | traced ms/step | output | from |")
    print("|---|---|---|---|")
    for op, ms in times.most_common(_TOP.value):
        shape, source = describe(hlo, op)
        print(f"| {op} | {ms:.2f} | {shape} | {source} |")


if __name__ == "__main__":
    app.run(main)
