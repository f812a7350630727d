"""jvision's malloc settings: a compiled step's scratch memory is reused from step to step (no
page faults once warm), and a user's own malloc settings are left alone."""

import platform
import subprocess
import sys

import pytest
from helpers import ROOT

from jvision import host_memory

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the settings are glibc's (mallopt)"
)

# A step whose scratch (XLA's temp buffer: a 3072² float32 intermediate, 36 MiB, above the 32 MiB
# up to which glibc's own threshold rises) is allocated by an XLA worker thread at every call;
# prints the page faults of its last 10 of 30 calls.
STEP = """
import resource
import jax, jax.numpy as jnp
@jax.jit
def step(x, w):
    return (jnp.sin(jnp.tanh(x @ w)) @ w.T).sum()
x, w = jnp.full((3072, 64), 1e-2), jnp.full((64, 3072), 1e-2)
assert 33 << 20 < step.lower(x, w).compile().memory_analysis().temp_size_in_bytes < 60 << 20
for call in range(30):
    if call == 20:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x, w).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def _faults(code: str, **env) -> int:
    env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_a_steps_scratch_memory_is_reused():
    """glibc's defaults map the 36 MiB afresh at each call (9,216 pages faulted in and zeroed);
    with jvision imported, the warm calls reuse it."""
    defaults = _faults("import jvision" + STEP, GLIBC_TUNABLES="")  # The user's choice: kept.
    ours = _faults("import jvision" + STEP)
    assert defaults > 10 * 9216 / 2, defaults  # At least half the scratch, at each of 10 calls.
    assert ours < defaults / 20, (ours, defaults)


def test_the_users_malloc_settings_are_kept(monkeypatch):
    for name in host_memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert host_memory.apply()  # glibc took every setting.
    for name in host_memory.USER_SETTINGS:
        monkeypatch.setenv(name, "")
        assert not host_memory.apply()
        monkeypatch.delenv(name)
