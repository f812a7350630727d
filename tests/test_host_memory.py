"""jvision's malloc settings: a compiled step's scratch memory is reused from step to step (the
median step takes no page faults), and a user's own malloc settings are left alone."""

import statistics
import subprocess
import sys

import pytest
from helpers import ROOT

from jvision import host_memory

pytestmark = pytest.mark.skipif(not host_memory.is_glibc(), reason="the settings are glibc's")


def _huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: a fresh mapping then faults in 2 MiB pages."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as file:
            return "[always]" in file.read()
    except OSError:
        return False


# A step whose scratch (XLA's temp buffer: a 3072² float32 intermediate, 36 MiB, above the 32 MiB
# up to which glibc's own threshold rises) is allocated by an XLA worker thread at every call;
# prints the page faults of each of its last 20 of 30 calls.
STEP = """
import resource
import jax, jax.numpy as jnp
@jax.jit
def step(x, w):
    return (jnp.sin(jnp.tanh(x @ w)) @ w.T).sum()
x, w = jnp.full((3072, 64), 1e-2), jnp.full((64, 3072), 1e-2)
assert 33 << 20 < step.lower(x, w).compile().memory_analysis().temp_size_in_bytes < 60 << 20
for call in range(30):
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x, w).block_until_ready()
    if call >= 10:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def _faults(code: str, **env) -> float:
    """The median page faults per call of `code`'s calls."""
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return statistics.median(int(line) for line in done.stdout.split())


@pytest.mark.skipif(_huge_pages_always(), reason="2 MiB pages: few faults to count either way")
def test_a_steps_scratch_memory_is_reused():
    """glibc's defaults map the 36 MiB afresh at each call (9,216 pages faulted in and zeroed);
    with jvision imported, a call reuses it (a call that lands on a worker thread for the first
    time still faults it in: the median call does not)."""
    defaults = _faults("import jvision" + STEP, GLIBC_TUNABLES="")  # The user's choice: kept.
    ours = _faults("import jvision" + STEP)
    assert defaults > 9216 / 2, defaults
    assert ours < 9216 / 20, (ours, defaults)


def test_the_users_malloc_settings_are_kept(monkeypatch):
    for name in host_memory.USER_SETTINGS:
        monkeypatch.setenv(name, "")
        assert not host_memory.apply()
        monkeypatch.delenv(name)
