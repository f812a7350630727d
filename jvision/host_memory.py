"""How the host's malloc (glibc's) serves XLA:CPU's scratch memory, set when jvision is imported.

Each execution of a compiled step allocates its scratch memory (XLA's temp buffers, tens of MiB
for the conv models' train steps) with malloc, on one of XLA's worker threads, and frees it when
the step ends. glibc maps a block above its mmap threshold (128 KiB, rising as such blocks are
freed to at most 32 MiB) with a fresh `mmap` and unmaps it when it is freed: under glibc's
defaults each step faults a larger scratch in again, page by page, the kernel zeroing each page
(docs/speed.md, "Page faults").

SETTINGS raise the threshold to 256 MiB and keep up to 512 MiB of freed memory mapped: a step's
scratch is then served from malloc's heaps and reused by the next step. A worker thread allocates
from its own heaps (glibc's per-thread arena), each of at most 64 MiB, and a larger block is
still mapped afresh: jvision has XLA split a larger scratch into pieces that fit (`xla_cpu.py`).
A scratch in pieces spans several heaps, and glibc unmaps a thread's last heap when it empties
unless the heap before it has less free room than malloc's top pad: SETTINGS make the pad 64 MiB,
a whole heap, so the heaps stay. Limits and costs:
- Each worker thread that runs a step keeps its own blocks: the first step on a thread faults the
  scratch in once more. Memory freed below 512 MiB stays with the process, and a thread's heaps
  are never given back: each thread's peak stays.
- The pad costs no resident memory, but commits address space: 64 MiB for each new thread heap
  and more at each growth of the main heap (it counts where the kernel limits overcommitment).
- A single intermediate above 64 MiB is still mapped afresh at every step.
- Numbers are unchanged: only where the bytes live moves.

A user's own malloc settings are kept: with `GLIBC_TUNABLES`, `MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_` or `MALLOC_TOP_PAD_` in the environment (even empty, which keeps glibc's
defaults), or outside glibc (macOS, musl), nothing is set.
"""

import ctypes
import os

# mallopt(3) parameter: value in bytes.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 512 << 20, M_TOP_PAD: 64 << 20}
# The environment variable glibc reads each parameter from when a process starts.
VARIABLES = {
    M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
    M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
    M_TOP_PAD: "MALLOC_TOP_PAD_",
}
USER_SETTINGS = ("GLIBC_TUNABLES", *VARIABLES.values())
# SETTINGS as those variables: a process started with them runs with jvision's settings.
ENVIRONMENT = {VARIABLES[parameter]: str(value) for parameter, value in SETTINGS.items()}


def apply() -> bool:
    """Sets SETTINGS for this process's malloc; False where the user's settings or a malloc
    other than glibc's are kept."""
    if any(name in os.environ for name in USER_SETTINGS) or not is_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt  # The process's own C library.
    taken = [mallopt(parameter, value) == 1 for parameter, value in SETTINGS.items()]
    return all(taken)  # Each is set on its own: an older glibc may refuse a threshold this high.


def is_glibc() -> bool:
    """Whether this process's C library is GNU's."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # Not a GNU C library (or not POSIX).
        return False
