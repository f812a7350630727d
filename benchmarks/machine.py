"""The machine compare.py runs on: one thread count for both frameworks, checked, and its peak.

Same thread count N (`--threads`, default: every core this process may run on,
`os.sched_getaffinity`), set by `set_threads` before either framework is imported:
- XLA:CPU sizes its intra-op thread pool (where its dots, convolutions and parallel loops run)
  from the environment variable `PJRT_NPROC` (then `NPROC`), else from the CPUs it may run on
  (`DefaultThreadPoolSize` in XLA's PJRT CPU client). `XLA_FLAGS` has no thread-count option
  (`intra_op_parallelism_threads` is TensorFlow's session option and an unknown XLA flag is fatal;
  `--xla_cpu_multi_thread_eigen` only switches Eigen's multithreading on or off, and is on by
  default). `--xla_force_host_platform_device_count` is removed from `XLA_FLAGS`: one device.
- PyTorch: `torch.set_num_threads(N)` (ATen's intra-op pool, OpenMP, used by oneDNN/MKL and by
  the C++ kernels torch.compile's Inductor generates) and `torch.set_num_interop_threads(1)`
  (compare.py, once torch is imported); `OMP_NUM_THREADS` and `MKL_NUM_THREADS` are set to N too.
- When N is fewer than the CPUs available, the process is also pinned to N of them
  (`os.sched_setaffinity`), so both frameworks run on the same cores.

Verified in every run, not assumed: `ThreadMeter`, around each timed round, reads each thread's CPU
time (`/proc/self/task/*/stat`) and the process's CPU time (`getrusage`); compare.py reports per
framework, over its rounds, the threads that ran ≥ 5% of the wall time ("busy threads") and CPU
time / wall time (how many cores' worth it got), and how many cores' worth *other* processes used
meanwhile on the same CPUs (`/proc/stat`'s busy time of the CPUs this process may run on, steal
included, less this process's own CPU time): a footnote flags a framework whose rounds shared the
cores with a quarter of a core or more of other work. A low CPU time / wall time on an idle machine
is the framework's own threading, not contention. Checked by hand on a 2-core machine (2048² matmul
and a 3×3 conv, each framework in its own process): N=1 gives 1 busy thread for both; N=2 gives 2
busy threads for PyTorch and 2-3 for XLA (the Python thread that dispatches also counts). On a
machine shared with other work, PyTorch's OpenMP threads wait for each other at every op's barrier,
so N threads on fewer free cores can be many times slower than fewer threads (measured there: a 3×3
conv at N=2 with one core taken by another process, 31 ms vs 8.5 ms at N=1); XLA's pool degrades
less. Compare `--threads` values when the machine is not idle.

The roofline's ceiling (`matmul_peak`): a float32 size³ matmul in JAX and in PyTorch at the same
thread count, measured at the start and the end of the run; the fastest of the four is the peak.
"""

from __future__ import annotations

import datetime
import os
import re
import resource
import statistics
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


def set_threads(threads: int) -> dict:
    """Makes both frameworks use `threads` threads (0: every CPU available). Returns what it set.

    Environment variables are read when jax and torch are imported: call this first."""
    available = sorted(os.sched_getaffinity(0))
    threads = threads or len(available)
    if "jax" in sys.modules or "torch" in sys.modules:
        print(
            "warning: jax or torch was imported before the benchmark set the thread count",
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


def describe(threads: dict, gpu: bool) -> dict:
    """The machine: CPU (model, vector extensions) or GPU, `set_threads`' settings, versions, date
    and load average; `device_line` names it in one line."""
    import jax
    import torch

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
    return machine


def _thread_ticks() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # The name in () may hold spaces.
            ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass  # The thread ended between listdir and open.
    return ticks


def _busy_cpu_seconds() -> float:
    """Busy time (user, nice, system, irq, softirq, steal) of the CPUs this process may run on,
    summed over them, from /proc/stat; 0.0 where there is no /proc/stat."""
    allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    busy = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in allowed:
                    user, nice, system, _, _, irq, softirq, steal = map(int, fields[1:9])
                    busy += user + nice + system + irq + softirq + steal
    except OSError:
        return 0.0
    return busy / os.sysconf("SC_CLK_TCK")


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ThreadMeter:
    """Counts, over the timed rounds of one framework, the CPU ticks of each thread of this
    process and the process's CPU time, against wall time."""

    def __init__(self):
        self.ticks: dict[str, int] = {}
        self.wall = self.cpu = self.busy = 0.0

    def __enter__(self):
        self._ticks, self._cpu, self._busy = _thread_ticks(), _process_cpu(), _busy_cpu_seconds()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._start
        self.cpu += _process_cpu() - self._cpu
        self.busy += _busy_cpu_seconds() - self._busy
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

    def others_per_wall(self) -> float:
        """Cores' worth of CPU time other processes used on this process's CPUs (never below 0:
        the two clocks tick at different moments)."""
        return max(0.0, self.busy - self.cpu) / self.wall if self.wall > 0 else 0.0


def matmul_peak(device: torch.device, size: int, repeats: int = 5) -> dict:
    """GFLOP/s of a float32 size³ matmul in JAX and PyTorch (median of `repeats`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

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


def peak_summary(start: dict, end: dict) -> dict:
    """`matmul_peak` at the start and the end of the run; `peak_gflops`, the fastest, is the
    ceiling GFLOP/s are compared with (the machine's speed may drift during a run)."""
    return {
        "size": start["size"],
        "jax_gflops_start": start["jax_gflops"],
        "jax_gflops_end": end["jax_gflops"],
        "torch_gflops_start": start["torch_gflops"],
        "torch_gflops_end": end["torch_gflops"],
        "peak_gflops": max(
            start["jax_gflops"], end["jax_gflops"], start["torch_gflops"], end["torch_gflops"]
        ),
    }
