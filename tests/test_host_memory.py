"""jvision's malloc settings (and XLA's scratch in pieces, `xla_cpu.py`): a compiled step's
scratch memory is reused from step to step (the median step takes no page faults), also when it
is larger than one of glibc's per-thread heaps, and a user's own malloc settings are left alone."""

import resource
import statistics
import subprocess
import sys

import pytest
from helpers import ROOT

from jvision import host_memory, xla_cpu

pytestmark = pytest.mark.skipif(not host_memory.is_glibc(), reason="the settings are glibc's")


def _huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: a fresh mapping then faults in 2 MiB pages."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as file:
            return "[always]" in file.read()
    except OSError:
        return False


# Calls a jitted `step` on `args` 30 times, its scratch (XLA's temp buffer) between `low` and
# `high` MiB allocated by an XLA worker thread at every call; prints the page faults of each of
# the last 20 calls.
CALLS = """
import resource
scratch = step.lower(*args).compile().memory_analysis().temp_size_in_bytes
assert low << 20 < scratch < high << 20, scratch
for call in range(30):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(*args).block_until_ready()
    if call >= 10:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""

# 36 MiB of scratch, a 3072² float32 intermediate: above the 32 MiB up to which glibc's own
# threshold rises.
STEP = (
    """
import jax, jax.numpy as jnp
@jax.jit
def step(x, w):
    return (jnp.sin(jnp.tanh(x @ w)) @ w.T).sum()
args = jnp.full((3072, 64), 1e-2), jnp.full((64, 3072), 1e-2)
low, high = 33, 60
"""
    + CALLS
)

# 72 MiB of scratch: two 3072² float32 intermediates live at once, more than the 64 MiB one of
# glibc's per-thread heaps holds.
TWO_HEAPS = (
    """
import jax, jax.numpy as jnp
@jax.jit
def step(x, w, v):
    a, b = jnp.tanh(x @ w), jnp.sin(x @ v)
    return ((a * b) @ w.T).sum() + (a @ v.T).sum() + (b @ w.T).sum()
args = jnp.full((3072, 64), 1e-2), jnp.full((64, 3072), 1e-2), jnp.full((64, 3072), 2e-2)
low, high = 70, 80
"""
    + CALLS
)

# glibc alone: a thread allocates three 30 MiB blocks (two of its 64 MiB heaps), writes them and
# frees them, 8 times; prints the page faults of the last 7 times.
HEAPS = """
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rounds():
    for time in range(8):
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        blocks = [libc.malloc(30 << 20) for _ in range(3)]
        for block in blocks:
            ctypes.memset(block, 1, 30 << 20)
        for block in blocks:
            libc.free(block)
        if time:
            print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults)
thread = threading.Thread(target=rounds)
thread.start()
thread.join()
"""


def _pages(mib: int) -> int:
    return (mib << 20) // resource.getpagesize()


def _faults(code: str, **env) -> float:
    """The median page faults per call of `code`'s calls. XLA's pool has 2 threads (it has one per
    core): a call that lands on a thread for the first time faults its scratch in, and on many
    cores most calls would."""
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "PJRT_NPROC": "2", **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return statistics.median(int(line) for line in done.stdout.split())


@pytest.mark.skipif(_huge_pages_always(), reason="2 MiB pages: few faults to count either way")
def test_a_steps_scratch_memory_is_reused():
    """glibc's defaults map the 36 MiB afresh at each call (9,216 pages of 4 KiB faulted in and
    zeroed); with jvision imported, a call reuses it (a call that lands on a worker thread for the
    first time still faults it in: the median call does not)."""
    defaults = _faults("import jvision" + STEP, GLIBC_TUNABLES="")  # The user's choice: kept.
    ours = _faults("import jvision" + STEP)
    assert defaults > _pages(36) / 2, defaults
    assert ours < _pages(36) / 20, (ours, defaults)


@pytest.mark.skipif(_huge_pages_always(), reason="2 MiB pages: few faults to count either way")
def test_a_scratch_larger_than_a_heap_is_reused():
    """In one buffer, the 72 MiB are mapped afresh at each call (18,432 pages of 4 KiB); in XLA
    pieces that fit glibc's heaps, reused."""
    whole = _faults("import jvision" + TWO_HEAPS, XLA_FLAGS=xla_cpu.XLA_DEFAULTS)
    ours = _faults("import jvision" + TWO_HEAPS)
    assert whole > _pages(72) / 2, whole
    assert ours < _pages(72) / 20, (ours, whole)


@pytest.mark.skipif(_huge_pages_always(), reason="2 MiB pages: few faults to count either way")
def test_a_threads_second_heap_is_kept_when_it_empties():
    """With glibc's top pad (128 KiB), the second heap (the third block's) is unmapped when it
    empties and its 7,680 pages of 4 KiB are faulted in again the next time; with jvision's
    64 MiB pad it stays."""
    small_pad = _faults(HEAPS, **{**host_memory.ENVIRONMENT, "MALLOC_TOP_PAD_": str(128 << 10)})
    ours = _faults("import jvision" + HEAPS)
    assert small_pad > _pages(30) / 2, small_pad
    assert ours < _pages(30) / 20, (ours, small_pad)


def test_the_users_malloc_settings_are_kept(monkeypatch):
    for name in host_memory.USER_SETTINGS:
        monkeypatch.setenv(name, "")
        assert not host_memory.apply()
        monkeypatch.delenv(name)
