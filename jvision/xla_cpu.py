"""The XLA:CPU settings jvision runs with, put into `XLA_FLAGS` when jvision is imported.

- **Convolutions in Eigen.** XLA:CPU (jaxlib 0.10.2) hands each convolution to YNNPACK, which
  runs it on one thread: on a 2-core CPU the convolutional models kept 1.3-1.8 cores busy. Its
  Eigen convolutions split each one across the cores: every convolutional model then keeps
  1.8-1.9 busy and its step is 1.05-1.2× faster; DRAW (no convolutions) is unchanged
  (docs/speed.md, "Both cores"). The results are the same computation rounded differently.
- **Scratch memory in pieces of at most 56 MiB.** XLA gives a compiled step one temp buffer for
  all its intermediates, which the runtime allocates with malloc at every call. glibc serves a
  block above 64 MiB (the paper's DRAW's, the encoding detector's) with a fresh mapping each time,
  faulted in page by page; in pieces that fit one of malloc's 64 MiB heaps the step's scratch is
  reused from step to step (`host_memory.py`; docs/speed.md, "Page faults"). Only where each
  buffer lives changes: the same bits. A single intermediate above 56 MiB keeps a piece of its
  own, and XLA warns of it when it compiles (`heap_simulator.cc: Alloc buffer size ... larger
  than the per-heap size limit`); one above 64 MiB is still mapped afresh at every step. GPU and
  TPU compilers read this option too, so it is set only where JAX runs on XLA:CPU alone
  (`runs_on_cpu_alone`).

XLA reads `XLA_FLAGS` when JAX makes its first computation: importing jvision before that (as
every `python -m jvision.…` command does) is enough; after it, the settings are left out. A
setting already in `XLA_FLAGS` is the user's choice and kept: XLA's own choices are
`XLA_DEFAULTS`. XLA ends a process whose `XLA_FLAGS` name an option it lacks, and experimental
options come and go: the settings are applied with the jaxlib releases they were measured on
(`JAXLIB`) only.
"""

import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

# option: (jvision's value, XLA's own value, whether GPU and TPU compilers read it too).
OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "-individual_convolution",
        "+individual_convolution",
        False,
    ),
    "xla_multiheap_size_constraint_per_heap": (str(56 << 20), "-1", True),
}
SETTINGS = {option: ours for option, (ours, _, _) in OPTIONS.items()}
JAXLIB = ("0.10.2",)
# What XLA does unasked (YNNPACK's convolutions, one temp buffer): to compare against.
XLA_DEFAULTS = " ".join(f"--{option}={xla}" for option, (_, xla, _) in OPTIONS.items())


def flags(current: str, cpu_only: bool = True) -> str:
    """`current` (an `XLA_FLAGS` value) with each of SETTINGS whose option it does not set; with
    `cpu_only` false, only those that XLA:CPU alone reads. A flag file (a value that is not
    flags: XLA reads the file it names) is left as it is."""
    if current.strip() and not current.strip().startswith("-"):
        return current
    named = {token.lstrip("-").split("=")[0] for token in current.split()}
    added = [
        f"--{option}={ours}"
        for option, (ours, _, every_compiler) in OPTIONS.items()
        if option not in named and (cpu_only or not every_compiler)
    ]
    return " ".join([current.strip(), *added]).strip()


def runs_on_cpu_alone() -> bool:
    """Whether JAX can run on XLA:CPU alone here: `JAX_PLATFORMS=cpu`, or no other backend to
    find (no PJRT plugin for CUDA, ROCm or Metal in the `jax_plugins` namespace or entry points,
    as JAX finds them; no libtpu package, nor a library named by `TPU_LIBRARY_PATH` or
    `PJRT_NAMES_AND_LIBRARY_PATHS`). A libtpu.so that only the dynamic loader would find is not
    seen."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    if os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
        return False
    if os.environ.get("PJRT_NAMES_AND_LIBRARY_PATHS") or importlib.util.find_spec("libtpu"):
        return False
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and any(pkgutil.iter_modules(namespace.submodule_search_locations)):
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


def apply() -> None:
    """Puts SETTINGS into this process's `XLA_FLAGS` (and its children's) while JAX has made no
    computation yet."""
    xla_bridge = sys.modules.get("jax._src.xla_bridge")  # Not imported: no computation yet.
    if xla_bridge is not None and xla_bridge.backends_are_initialized():
        return
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    if jaxlib in JAXLIB:
        os.environ["XLA_FLAGS"] = flags(os.environ.get("XLA_FLAGS", ""), runs_on_cpu_alone())
