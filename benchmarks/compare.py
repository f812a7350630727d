"""jvision's train step against its PyTorch twin, eager and torch.compile'd, in one process.

    python benchmarks/compare.py [--configs=vae_mnist,ssd_mnist,...] [--rounds=3] [--steps=20]
        [--warmup=3] [--threads=N] [--no_compile] [--markdown=PATH] [--ssd_steps_to_target=4000]

`--configs` takes config names (`configs/<name>.py`), optionally with the config's argument
(`vae_mnist:tiny`), or paths (`configs/x.py:tiny`); the default is every config with a PyTorch twin
(`benchmarks/torch_models.CONFIGS`), so a new twin (e.g. the encoding detector's) adds its row.

For each config: jvision's jitted train step built as `benchmarks/step_time.py` builds it (one
device, the config's global batch), and the twin of the same architecture, loss and optimizer
(`benchmarks/torch_models`), loaded with jvision's initial weights, on the same real batch from
jvision's Grain pipeline. Each framework draws its own noise inside its step (jvision from
`fold_in(key, step)`, the twin with torch's generator). After `--warmup` steps of each, rounds
alternate jvision / PyTorch eager / torch.compile, `--steps` steps each, `--rounds` times; a
framework's ms/step is the median over rounds of (round wall time / steps), the spread the min-max
over rounds. Each round ends on a completed step (`block_until_ready`; `torch.cuda.synchronize` on
a GPU); the twin's step is `benchmarks.torch_models.train_step` (zero_grad, loss, backward,
optimizer step). torch.compile compiles the twin's loss (forward, and through AOTAutograd its
backward) and the optimizer step, the recommended split: `loss.backward()` is a graph break.

Same thread count (`--threads`, default: every core this process may run on,
`os.sched_getaffinity`), set before either framework is imported:
- XLA:CPU sizes its intra-op thread pool (where its dots, convolutions and parallel loops run)
  from the environment variable `PJRT_NPROC` (then `NPROC`), else from the CPUs it may run on
  (`DefaultThreadPoolSize` in XLA's PJRT CPU client). `XLA_FLAGS` has no thread-count option
  (`intra_op_parallelism_threads` is TensorFlow's session option and an unknown XLA flag is fatal;
  `--xla_cpu_multi_thread_eigen` only switches Eigen's multithreading on or off, and is on by
  default). `--xla_force_host_platform_device_count` is removed from `XLA_FLAGS`: one device.
- PyTorch: `torch.set_num_threads(N)` (ATen's intra-op pool, OpenMP, used by oneDNN/MKL and by
  the C++ kernels torch.compile's Inductor generates) and `torch.set_num_interop_threads(1)`;
  `OMP_NUM_THREADS` and `MKL_NUM_THREADS` are set to N as well.
- When N is fewer than the CPUs available, the process is also pinned to N of them
  (`os.sched_setaffinity`), so both frameworks run on the same cores.
Verified in every run, not assumed: around each timed round the script reads each thread's CPU
time (`/proc/self/task/*/stat`) and the process's CPU time (`getrusage`), and reports per framework,
over its rounds, the threads that ran ≥ 5% of the wall time ("busy threads") and CPU time / wall
time (how many cores' worth it got; a footnote flags a framework that got under 75% of N).
Checked by hand on this 2-core machine (2048² matmul and a 3×3 conv, each framework in its own
process): N=1 gives 1 busy thread for both; N=2 gives 2 busy threads for PyTorch and 2-3
for XLA (the Python thread that dispatches also counts). On a machine shared with other work,
PyTorch's OpenMP threads wait for each other at every op's barrier, so N threads on fewer free
cores can be many times slower than fewer threads (measured here: a 3×3 conv at N=2 with one
core taken by another process, 31 ms vs 8.5 ms at N=1); XLA's pool degrades less. Compare
`--threads` values when the machine is not idle.

Columns (also in the footnotes written with the table):
- compile: jvision's `step.lower(...).compile()` wall time; torch.compile's first call (tracing,
  AOTAutograd and Inductor codegen of the loss, its backward and the optimizer step) plus every
  warm-up call that compiled again (a guard failed, e.g. the step number, an int argument, turned
  dynamic); frames compiled during the timed rounds are counted in the JSON and a footnote.
- peak memory: for jvision, XLA's own buffer assignment of the compiled step
  (`compiled.memory_analysis()`: arguments + outputs - donated aliases + temporaries: state,
  batch and every intermediate, what XLA allocates for one step); for PyTorch on CPU, the tensors
  alive when the step starts (parameters, buffers, optimizer state, batch; gradients freed) plus
  the peak of bytes allocated through PyTorch's CPU allocator during one step
  (`torch.profiler` with `profile_memory=True`, each allocation's running total), i.e. the same
  quantity counted by the allocator rather than planned by a compiler. Neither counts the
  frameworks' code, caches or thread stacks. On a GPU: `torch.cuda.max_memory_allocated()` over
  one step (reset before), and for jvision both the compiled step's analysis (in the table) and
  `peak_bytes_in_use` of the device (in the JSON; it cannot be reset between configs).
- FLOPs: `compiled.cost_analysis()["flops"]` of jvision's step (XLA's count: 2 per
  multiply-add of dots and convolutions, 1 per elementwise op); both frameworks do the same work,
  so GFLOP/s = that count / each framework's step time, and "% of peak" compares it with a
  float32 matmul measured in the same run (2048³ on CPU, 8192³ on a GPU; the faster of JAX and
  PyTorch, at the same thread count, measured at the start and the end: the roofline's ceiling).
- pipeline: batches/s of jvision's Grain training iterator (`next(it)`, as step_time.py) against
  the batches/s the jvision step consumes (1000 / ms per step).
- SSD time to accuracy (`ssd_mnist`): jvision's wall time to reach the tutorial's mAP 0.8817 as
  `--ssd_steps_to_target` × jvision's measured ms/step, against the tutorial's schedule (the
  config's `total_steps`, 80,000) × the PyTorch eager ms/step measured in the same run. Train steps
  only: evaluation time is excluded on both sides.

Output: the machine (CPU model and vector extensions from /proc/cpuinfo, or the GPU's name), the
thread count and date, the Markdown table (one row per config) with its footnotes, and one JSON
line with every number. `--markdown=PATH` also writes the table and footnotes to PATH.
"""

import copy
import datetime
import gc
import json
import math
import os
import re
import resource
import statistics
import sys
import time
import traceback

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
_MARKDOWN = flags.DEFINE_string("markdown", None, "Also write the table and footnotes here.")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 100, "Timed input batches.")
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", 0, "Size of the peak-measuring matmul (0: 2048 on CPU, 8192 on a GPU)."
)
# configs/ssd_mnist_short.py (documented result): "mAP after 5 epochs: 0.8936", its first
# evaluation, at 5 × 800 = 4,000 steps (on its 10-epoch schedule: the rate is halved at epoch 4).
SSD_STEPS_SOURCE = (
    "configs/ssd_mnist_short.py: mAP 0.8936 at its first evaluation, after 5 epochs = 4,000 steps "
    "(10-epoch schedule; an upper bound, earlier steps were not evaluated)"
)
_SSD_STEPS = flags.DEFINE_integer(
    "ssd_steps_to_target",
    4000,
    f"jvision's train steps to reach the tutorial's mAP 0.8817 (default: {SSD_STEPS_SOURCE})",
)
SSD_TARGET_MAP = 0.8817  # The tutorial's reported test mAP.

# /proc/cpuinfo flags worth naming for float32/bfloat16 training.
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)

FRAMEWORKS = ("jvision", "eager", "compiled")


# --- Environment (before jax and torch are imported) -----------------------------------------


def set_threads(threads: int) -> dict:
    """Makes both frameworks use `threads` threads (0: every CPU available). Returns what it set."""
    available = sorted(os.sched_getaffinity(0))
    threads = threads or len(available)
    if "jax" in sys.modules or "torch" in sys.modules:
        print(
            "warning: jax or torch was imported before compare.py set the thread count",
            file=sys.stderr,
        )
    pinned = None
    if threads < len(available):
        pinned = available[:threads]
        os.sched_setaffinity(0, pinned)
    for name in ("PJRT_NPROC", "NPROC", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    xla_flags = os.environ.get("XLA_FLAGS", "")
    kept = " ".join(
        f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")
    )
    if kept != xla_flags.strip():
        os.environ["XLA_FLAGS"] = kept
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return {
        "threads": threads,
        "cpus_available": len(available),
        "pinned_to": pinned,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def cpu_info() -> dict:
    model, flags_found = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        match = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        model = match.group(1).strip() if match else model
        match = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        present = set(match.group(1).split()) if match else set()
        flags_found = [f for f in CPU_FLAGS if f in present]
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": flags_found, "logical_cpus": os.cpu_count()}


def loadavg() -> str:
    """The 1-minute load average (this process included), as /proc/loadavg gives it."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


# --- Thread accounting ---------------------------------------------------------------------


def _thread_ticks() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass
    return ticks


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ThreadMeter:
    """Counts, over the timed rounds of one framework, the CPU ticks of each thread of this
    process and the process's CPU time, against wall time."""

    def __init__(self):
        self.ticks: dict[str, int] = {}
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._ticks, self._cpu, self._start = _thread_ticks(), _process_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._start
        self.cpu += _process_cpu() - self._cpu
        for tid, value in _thread_ticks().items():
            self.ticks[tid] = self.ticks.get(tid, 0) + value - self._ticks.get(tid, 0)

    def busy_threads(self) -> int | None:
        """Threads that ran ≥ 5% of the wall time; None when the rounds were too short to tell
        (under 20 clock ticks)."""
        hz = os.sysconf("SC_CLK_TCK")
        if self.wall * hz < 20:
            return None
        return sum(1 for value in self.ticks.values() if value >= 0.05 * self.wall * hz)

    def cpu_per_wall(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0


# --- Helpers ---------------------------------------------------------------------------------


def load_config(spec: str):
    from jvision import config_lib

    path, _, arg = spec.partition(":")
    if not path.endswith(".py"):
        path = os.path.join(ROOT, "configs", f"{path}.py")
    module = config_lib.load_config_module(path)
    return module.get_config(arg or None)


def config_label(spec: str) -> str:
    path, _, arg = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return f"{name}:{arg}" if arg else name


def first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def cost_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # Not every backend implements it.
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_memory_bytes(compiled) -> dict | None:
    try:
        analysis = compiled.memory_analysis()
    except Exception:
        return None
    if analysis is None:
        return None
    fields = ("argument", "output", "alias", "temp", "generated_code")
    out = {f: int(getattr(analysis, f"{f}_size_in_bytes", 0)) for f in fields}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def matmul_peak(torch, device, size: int, repeats: int = 5) -> dict:
    """GFLOP/s of a float32 size³ matmul in JAX and PyTorch (median of `repeats`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    flops = 2.0 * size**3
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    jax_gflops = flops / statistics.median(times) / 1e9
    t = torch.from_numpy(np.array(a)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(t, t)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(t, t)
        sync()
        times.append(time.perf_counter() - start)
    torch_gflops = flops / statistics.median(times) / 1e9
    return {"size": size, "jax_gflops": jax_gflops, "torch_gflops": torch_gflops}


def torch_live_bytes(torch, model, optimizer, batch) -> int:
    """Bytes of the tensors alive at the start of a step (gradients freed): parameters, buffers,
    optimizer state and the batch, each storage counted once."""
    seen, total = set(), 0

    def add(tensor):
        nonlocal total
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()

    for tensor in [*model.parameters(), *model.buffers(), *batch.values()]:
        add(tensor)
    for state in optimizer.state.values():
        for value in state.values():
            add(value)
    return total


def torch_step_peak_bytes(torch, step, model, optimizer, batch, device) -> int | None:
    """Peak bytes during one `step()` (module docstring, "peak memory")."""
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        live = torch_live_bytes(torch, model, optimizer, batch)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()

        def walk(events):
            for event in events:
                yield event
                yield from walk(event.children)

        tree = prof.profiler.kineto_results.experimental_event_tree()
        totals = [
            e.extra_fields.total_allocated
            for e in walk(tree)
            if e.tag == _EventType.Allocation and str(e.extra_fields.device) == "cpu"
        ]
        return live + max([0, *totals])
    except Exception as error:  # Private profiler API: report rather than fail.
        print(f"warning: torch memory measurement failed: {first_line(error)}", file=sys.stderr)
        return None


# --- One config ------------------------------------------------------------------------------


def compiled_frames() -> int:
    """Frames torch.compile has compiled in this process (since the last `_dynamo.reset`)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def compare_config(spec: str, torch, device, args) -> dict:
    import jax
    from flax import nnx

    from benchmarks import torch_models as tm
    from benchmarks.jvision_step import compile_step

    label = config_label(spec)
    config = load_config(spec)
    result = {"config": label, "model": config.model.name, "batch": config.batch_size}
    gpu = device.type == "cuda"

    def sync_torch():
        if gpu:
            torch.cuda.synchronize()

    # jvision, as benchmarks/step_time.py.
    jvision_step = compile_step(config)
    host_batch, data = jvision_step.host_batch, jvision_step.data
    result["jvision_compile_s"] = jvision_step.compile_s
    result["flops"] = cost_flops(jvision_step.compiled)
    result["jvision_memory"] = xla_memory_bytes(jvision_step.compiled)

    # The twin, from jvision's initial weights (before any jvision step: the state is donated).
    model = tm.build(config)
    tm.load_jvision_weights(model, nnx.to_pure_dict(jvision_step.state["model"]))
    compiled_model = copy.deepcopy(model) if not args.no_compile else None
    model.to(device)
    optimizer = tm.make_optimizer(model, config)
    torch_batch = {k: v.to(device) for k, v in tm.to_torch_batch(host_batch).items()}

    runners = {}

    runners["jvision"] = jvision_step.run

    def run_eager(first, count):
        for step in range(first, first + count):
            tm.train_step(model, optimizer, torch_batch, None, step)
        sync_torch()

    runners["eager"] = run_eager

    compiled_optimizer = None
    if compiled_model is not None:
        compiled_model.to(device)
        compiled_optimizer = tm.make_optimizer(compiled_model, config)
        loss_fn = torch.compile(lambda b, step: compiled_model.loss(b, None, step)[0])
        optimizer_step = torch.compile(compiled_optimizer.step)

        def compiled_step(step):
            compiled_optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(torch_batch, step)
            loss.backward()
            optimizer_step()
            return loss.detach()

        def run_compiled(first, count):
            for step in range(first, first + count):
                compiled_step(step)
            sync_torch()

        runners["compiled"] = run_compiled
    elif args.no_compile:
        result["torch_compile_error"] = "skipped (--no_compile)"

    # Warm-up. torch.compile compiles on its first call, and again on a later one if a guard
    # fails (e.g. an int argument that changed becomes dynamic): every warm-up call that compiled
    # a frame counts as compile time.
    first_step = dict.fromkeys(runners, 0)
    for name, run in list(runners.items()):
        if name != "compiled":
            run(0, args.warmup)
            first_step[name] = args.warmup
            continue
        compile_s, frames = 0.0, 0
        try:
            for step in range(max(args.warmup, 1)):
                start = time.perf_counter()
                run(step, 1)
                elapsed = time.perf_counter() - start
                if step == 0 or compiled_frames() > frames:
                    compile_s += elapsed
                frames = compiled_frames()
                first_step[name] = step + 1
        except Exception as error:
            traceback.print_exc()
            result["torch_compile_error"] = f"failed: {first_line(error)}"
            del runners["compiled"]
            compiled_model = compiled_optimizer = None
            continue
        result["torch_compile_s"] = compile_s
        result["torch_compiled_frames"] = frames

    # Alternating rounds.
    times = {name: [] for name in runners}
    meters = {name: ThreadMeter() for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            with meters[name]:
                start = time.perf_counter()
                run(first_step[name], args.steps)
                elapsed = time.perf_counter() - start
            first_step[name] += args.steps
            times[name].append(elapsed / args.steps * 1e3)
    for name in runners:
        result[f"{name}_ms"] = statistics.median(times[name])
        result[f"{name}_ms_rounds"] = times[name]
        result[f"{name}_busy_threads"] = meters[name].busy_threads()
        result[f"{name}_cpu_per_wall"] = meters[name].cpu_per_wall()
    if "compiled" in runners:
        result["torch_recompiles_in_rounds"] = compiled_frames() - result["torch_compiled_frames"]

    # Peak memory of one step (outside the timed rounds).
    result["eager_memory_bytes"] = torch_step_peak_bytes(
        torch,
        lambda: tm.train_step(model, optimizer, torch_batch, None, first_step["eager"]),
        model,
        optimizer,
        torch_batch,
        device,
    )
    if "compiled" in runners:
        result["compiled_memory_bytes"] = torch_step_peak_bytes(
            torch,
            lambda: runners["compiled"](first_step["compiled"], 1),
            compiled_model,
            compiled_optimizer,
            torch_batch,
            device,
        )
    if gpu:
        stats = jax.devices()[0].memory_stats() or {}
        result["jax_device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")

    # The input pipeline on its own (after the rounds: its prefetch buffer was full during them).
    next(data)
    start = time.perf_counter()
    for _ in range(args.pipeline_batches):
        next(data)
    result["pipeline_batches_per_s"] = args.pipeline_batches / (time.perf_counter() - start)
    result["step_batches_per_s"] = 1e3 / result["jvision_ms"]

    if label == "ssd_mnist":
        tutorial_steps = int(config.total_steps)
        result["ssd_time_to_accuracy"] = {
            "target_map": SSD_TARGET_MAP,
            "jvision_steps": args.ssd_steps_to_target,
            "jvision_steps_source": args.ssd_steps_source,
            "jvision_s": args.ssd_steps_to_target * result["jvision_ms"] / 1e3,
            "tutorial_steps": tutorial_steps,
            "tutorial_s_at_eager_step": tutorial_steps * result["eager_ms"] / 1e3,
            "jvision_s_tutorial_schedule": tutorial_steps * result["jvision_ms"] / 1e3,
        }

    return result


# --- Report ----------------------------------------------------------------------------------


def _ms(result, name) -> str:
    if f"{name}_ms" not in result:
        error = result.get("torch_compile_error", "") if name == "compiled" else ""
        return "skipped" if error.startswith("skipped") else "failed" if error else "—"
    rounds = result[f"{name}_ms_rounds"]
    value = result[f"{name}_ms"]
    digits = 1 if value >= 10 else 2
    if len(rounds) == 1:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({min(rounds):.{digits}f}–{max(rounds):.{digits}f})"


def _ratio(result, name) -> str:
    if f"{name}_ms" not in result:
        return "—"
    return f"{result[f'{name}_ms'] / result['jvision_ms']:.2f}×"


def _times(value: float) -> str:
    """`47×`, `1.1×`, `0.24×`: two significant digits below 10 (a stall must not read as 0×)."""
    return f"{value:.0f}×" if value >= 10 else f"{value:.2g}×"


def _mib(value) -> str:
    return "—" if value is None else f"{value / 2**20:.1f}"


def _gflops(result, name, peak) -> str:
    if not result.get("flops") or f"{name}_ms" not in result:
        return "—"
    rate = result["flops"] / (result[f"{name}_ms"] / 1e3) / 1e9
    return f"{rate:.{0 if rate >= 10 else 1}f} ({100 * rate / peak:.{0 if rate >= 10 else 1}f}%)"


HEADER = (
    "| config | batch | jvision ms/step | PyTorch eager ms/step | torch.compile ms/step "
    "| jvision speed-up vs eager (eager ms / jvision ms) "
    "| jvision speed-up vs compiled (compiled ms / jvision ms) "
    "| jvision compile s | torch.compile s | GFLOP/step "
    "| GFLOP/s (% of matmul peak): jvision / eager / compiled "
    "| peak memory MiB: jvision / eager / compiled "
    "| pipeline vs step, batches/s |"
)


def table(results, peak_gflops) -> list[str]:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in results:
        if "error" in r:
            cells = [f"`{r['config']}`", "—", f"failed: {r['error']}"] + ["—"] * 10
            lines.append("| " + " | ".join(cells) + " |")
            continue
        memory = r.get("jvision_memory") or {}
        cells = [
            f"`{r['config']}`",
            str(r["batch"]),
            _ms(r, "jvision"),
            _ms(r, "eager"),
            _ms(r, "compiled"),
            _ratio(r, "eager"),
            _ratio(r, "compiled"),
            f"{r['jvision_compile_s']:.1f}",
            f"{r['torch_compile_s']:.1f}" if "torch_compile_s" in r else "—",
            f"{r['flops'] / 1e9:.3g}" if r.get("flops") else "—",
            " / ".join(_gflops(r, n, peak_gflops) for n in FRAMEWORKS),
            " / ".join(
                [
                    _mib(memory.get("peak")),
                    _mib(r.get("eager_memory_bytes")),
                    _mib(r.get("compiled_memory_bytes")),
                ]
            ),
            f"{r['pipeline_batches_per_s']:,.0f} vs {r['step_batches_per_s']:,.0f} "
            f"({_times(r['pipeline_batches_per_s'] / r['step_batches_per_s'])})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def footnotes(results, machine, args) -> list[str]:
    peak = machine["matmul"]
    notes = [
        f"Machine: {machine['device_line']}. Threads: {machine['threads']} for both frameworks "
        f"(XLA: PJRT_NPROC; PyTorch: set_num_threads, 1 inter-op thread)"
        + (f", pinned to CPUs {machine['pinned_to']}" if machine["pinned_to"] else "")
        + f". {machine['date']}; jax {machine['jax']}, torch {machine['torch']}; load average "
        f"{machine['loadavg_start']} at the start, {machine['loadavg_end']} at the end.",
        f"ms/step: median over {args.rounds} alternating rounds of {args.steps} steps each "
        f"(min–max over rounds in parentheses), after {args.warmup} warm-up steps; one real batch "
        "from jvision's pipeline, on the device; each framework draws its own noise in its step.",
        "Speed-ups: PyTorch ms / jvision ms (above 1: jvision is faster).",
        "Compile: jvision `lower().compile()`; torch.compile's first call (loss, backward and "
        "optimizer step compiled by Inductor) and any warm-up call that recompiled.",
        f"GFLOP/step: XLA's cost analysis of jvision's step; the same count is used for PyTorch "
        f"(same model, same work). Matmul peak: float32 {peak['size']}³, "
        f"{peak['peak_gflops']:.0f} GFLOP/s (JAX {peak['jax_gflops_start']:.0f} → "
        f"{peak['jax_gflops_end']:.0f}, PyTorch {peak['torch_gflops_start']:.0f} → "
        f"{peak['torch_gflops_end']:.0f}, start → end of the run; the highest is the peak).",
        "Peak memory: jvision: XLA's buffer assignment of the compiled step (arguments + outputs "
        "- donated + temporaries); PyTorch: "
        + (
            "`torch.cuda.max_memory_allocated()` over one step."
            if machine["gpu"]
            else "tensors alive at the step's start (parameters, buffers, optimizer state, "
            "batch) + peak bytes allocated through its CPU allocator during one step "
            "(torch.profiler, profile_memory). Neither counts code, caches or thread stacks."
        ),
        "Pipeline: jvision's Grain iterator alone (`next(it)`) vs the batches/s jvision's step "
        "consumes; it must be higher or the step waits for data.",
    ]
    for r in results:
        if "error" in r:
            continue
        name = r["config"]
        threads = ", ".join(
            f"{n} {r[f'{n}_busy_threads'] if r[f'{n}_busy_threads'] is not None else '?'} "
            f"({r[f'{n}_cpu_per_wall']:.2f})"
            for n in FRAMEWORKS
            if f"{n}_busy_threads" in r
        )
        if not machine["gpu"]:
            notes.append(
                f"`{name}`: threads that ran ≥ 5% of the timed rounds (CPU time / wall time): "
                f"{threads}; XLA's count includes the Python thread that dispatches the step."
            )
            starved = [
                n
                for n in FRAMEWORKS
                if f"{n}_cpu_per_wall" in r
                and r[f"{n}_cpu_per_wall"] < 0.75 * machine["threads"]
                and machine["threads"] > 1
            ]
            if starved:
                notes.append(
                    f"`{name}`: **contended**: {', '.join(starved)} got under 75% of "
                    f"{machine['threads']} cores' CPU time (load average "
                    f"{machine['loadavg_start']} → {machine['loadavg_end']}): another process "
                    "shared the cores, and PyTorch's OpenMP threads wait at every op for a "
                    "descheduled peer. Run on an idle machine or compare `--threads=1`."
                )
        if "torch_compile_error" in r:
            notes.append(f"`{name}`: torch.compile {r['torch_compile_error']}.")
        elif "compiled_ms" in r:
            gain = r["eager_ms"] - r["compiled_ms"]
            if gain <= 0:
                notes.append(
                    f"`{name}`: torch.compile does not pay: {r['compiled_ms']:.1f} ms vs eager "
                    f"{r['eager_ms']:.1f} ms per step, after {r['torch_compile_s']:.0f} s of "
                    "compilation."
                )
            else:
                notes.append(
                    f"`{name}`: torch.compile saves {gain:.1f} ms per step; its "
                    f"{r['torch_compile_s']:.0f} s of compilation pay back after "
                    f"{r['torch_compile_s'] * 1e3 / gain:,.0f} steps."
                )
            if r.get("torch_recompiles_in_rounds"):
                notes.append(
                    f"`{name}`: torch.compile compiled {r['torch_recompiles_in_rounds']} more "
                    "frame(s) during the timed rounds (recompilation: its ms/step includes it)."
                )
        ssd = r.get("ssd_time_to_accuracy")
        if ssd:
            notes.append(
                f"SSD time to the tutorial's mAP {ssd['target_map']}: jvision "
                f"{ssd['jvision_steps']:,} steps × {r['jvision_ms']:.1f} ms = "
                f"{ssd['jvision_s'] / 60:.1f} min; the tutorial's {ssd['tutorial_steps']:,} steps "
                f"× PyTorch eager {r['eager_ms']:.1f} ms = "
                f"{ssd['tutorial_s_at_eager_step'] / 60:.1f} min "
                f"({ssd['tutorial_s_at_eager_step'] / ssd['jvision_s']:.1f}× longer); jvision on "
                f"the tutorial's schedule: {ssd['jvision_s_tutorial_schedule'] / 60:.1f} min. "
                f"Train steps only, evaluation excluded. jvision's steps: "
                f"{ssd['jvision_steps_source']}."
            )
    return notes


# --- Main ------------------------------------------------------------------------------------


class Args:
    def __init__(self):
        self.rounds, self.steps, self.warmup = _ROUNDS.value, _STEPS.value, _WARMUP.value
        self.no_compile = _NO_COMPILE.value
        self.pipeline_batches = _PIPELINE_BATCHES.value
        self.ssd_steps_to_target = _SSD_STEPS.value
        self.ssd_steps_source = (
            SSD_STEPS_SOURCE
            if _SSD_STEPS.value == _SSD_STEPS.default
            else "--ssd_steps_to_target (given on the command line)"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = Args()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # create_state logs a parameter table at INFO.
    if args.rounds < 1 or args.steps < 1:
        raise app.UsageError("--rounds and --steps must be at least 1")
    threads = set_threads(_THREADS.value)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

    import jax
    import torch

    torch.set_num_threads(threads["threads"])
    torch.set_num_interop_threads(1)
    from benchmarks import torch_models as tm

    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        # XLA's default precision runs float32 dots and convolutions as TF32 on NVIDIA GPUs
        # (Ampere and later); PyTorch's default does so for convolutions only. Match XLA.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if jax.device_count() != 1 and not gpu:
        print(f"warning: {jax.device_count()} JAX devices; comparing on all", file=sys.stderr)

    machine = {
        **cpu_info(),
        **threads,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "gpu": gpu,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "loadavg_start": loadavg(),
    }
    if gpu:
        machine["gpu_name"] = torch.cuda.get_device_name()
        machine["jax_device_kind"] = jax.devices()[0].device_kind
        machine["device_line"] = (
            f"{machine['gpu_name']} (JAX: {machine['jax_device_kind']}, {jax.default_backend()}); "
            f"host CPU {machine['cpu']}"
        )
    else:
        machine["device_line"] = (
            f"CPU {machine['cpu']}, {len(os.sched_getaffinity(0))} of {machine['logical_cpus']} "
            f"logical CPUs; extensions: {', '.join(machine['cpu_flags']) or 'none found'}"
        )
    print(f"# {machine['device_line']}")
    print(
        f"# threads: {threads['threads']} (XLA PJRT_NPROC={os.environ['PJRT_NPROC']}, torch "
        f"{machine['torch_threads']} intra-op + {machine['torch_interop_threads']} inter-op); "
        f"{machine['date']}; jax {machine['jax']}, torch {machine['torch']}",
        flush=True,
    )

    size = _MATMUL_SIZE.value or (8192 if gpu else 2048)
    start_peak = matmul_peak(torch, device, size)
    print(
        f"# float32 {size}³ matmul: JAX {start_peak['jax_gflops']:.0f} GFLOP/s, PyTorch "
        f"{start_peak['torch_gflops']:.0f} GFLOP/s",
        flush=True,
    )

    specs = _CONFIGS.value or list(tm.CONFIGS)
    results = []
    for spec in specs:
        print(f"# {config_label(spec)} ...", flush=True)
        try:
            result = compare_config(spec, torch, device, args)
        except Exception as error:
            traceback.print_exc()
            result = {"config": config_label(spec), "error": first_line(error)}
        results.append(result)
        torch._dynamo.reset()  # Frees the compiled graphs; compiled_frames() counts afresh.
        from torch._dynamo.utils import counters

        counters.clear()
        gc.collect()
        summary = {
            k: round(v, 2) if isinstance(v, float) else v
            for k, v in result.items()
            if k in ("jvision_ms", "eager_ms", "compiled_ms", "error", "torch_compile_error")
        }
        print(f"#   {summary}", flush=True)

    machine["loadavg_end"] = loadavg()
    end_peak = matmul_peak(torch, device, size)
    machine["matmul"] = {
        "size": size,
        "jax_gflops_start": start_peak["jax_gflops"],
        "jax_gflops_end": end_peak["jax_gflops"],
        "torch_gflops_start": start_peak["torch_gflops"],
        "torch_gflops_end": end_peak["torch_gflops"],
        "peak_gflops": max(
            start_peak["jax_gflops"],
            end_peak["jax_gflops"],
            start_peak["torch_gflops"],
            end_peak["torch_gflops"],
        ),
    }

    lines = table(results, machine["matmul"]["peak_gflops"])
    notes = footnotes(results, machine, args)
    markdown = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print()
    print(markdown)
    print(json.dumps({"machine": machine, "results": results}, default=_json_default))
    if _MARKDOWN.value:
        with open(_MARKDOWN.value, "w") as f:
            f.write(markdown)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


if __name__ == "__main__":
    app.run(main)
