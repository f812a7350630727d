"""jvision's XLA:CPU settings: added to XLA_FLAGS at import unless the user set the option or JAX
already computed; an option GPU and TPU compilers read too, only where JAX runs on XLA:CPU alone;
and what they select (Eigen's convolutions, not YNNPACK's) compiled as such. What the scratch's
pieces do: tests/test_host_memory.py."""

import subprocess
import sys

import pytest
from helpers import ROOT

from jvision import xla_cpu

OPTION = "--xla_cpu_experimental_ynn_fusion_type"
PIECES = "--xla_multiheap_size_constraint_per_heap"
OURS = f"{OPTION}={xla_cpu.SETTINGS[OPTION[2:]]} {PIECES}={xla_cpu.SETTINGS[PIECES[2:]]}"
CONVOLUTION = """
import jax, jax.numpy as jnp
convolve = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = convolve.lower(jnp.ones((64, 7, 7, 64)), jnp.ones((3, 3, 64, 128))).compile().as_text()
print("ynn" in hlo)
"""


def test_the_settings_are_for_the_installed_jaxlib():
    """They were measured on the pinned jaxlib; another one would skip them (see JAXLIB)."""
    import importlib.metadata

    assert importlib.metadata.version("jaxlib") in xla_cpu.JAXLIB


def test_flags_adds_only_what_is_not_set():
    assert xla_cpu.flags("") == OURS
    devices = "--xla_force_host_platform_device_count=8"
    assert xla_cpu.flags(f" {devices} ") == f"{devices} {OURS}"
    mine = f"{devices} {xla_cpu.XLA_DEFAULTS}"
    assert xla_cpu.flags(mine) == mine
    assert xla_cpu.flags(f"{PIECES}=-1") == f"{PIECES}=-1 {OPTION}=-individual_convolution"
    assert xla_cpu.flags("/etc/xla_flags.txt") == "/etc/xla_flags.txt"  # A flag file: XLA's.


def test_with_an_accelerator_only_what_xla_cpu_alone_reads_is_added():
    assert xla_cpu.flags("", cpu_only=False) == f"{OPTION}=-individual_convolution"


def test_whether_jax_runs_on_xla_cpu_alone(monkeypatch, tmp_path):
    for name in ("JAX_PLATFORMS", "TPU_LIBRARY_PATH", "PJRT_NAMES_AND_LIBRARY_PATHS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(xla_cpu.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(xla_cpu.importlib.metadata, "entry_points", lambda group: ())
    assert xla_cpu.runs_on_cpu_alone()  # Nothing else installed.
    library = tmp_path / "libtpu.so"
    monkeypatch.setenv("TPU_LIBRARY_PATH", str(library))
    assert xla_cpu.runs_on_cpu_alone()  # JAX loads no library that is not there.
    library.write_bytes(b"")
    assert not xla_cpu.runs_on_cpu_alone()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert xla_cpu.runs_on_cpu_alone()  # Whatever is installed, JAX is told to use XLA:CPU.
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.delenv("TPU_LIBRARY_PATH")
    monkeypatch.setenv("PJRT_NAMES_AND_LIBRARY_PATHS", "cuda:/opt/pjrt_cuda.so")
    assert not xla_cpu.runs_on_cpu_alone()
    monkeypatch.delenv("PJRT_NAMES_AND_LIBRARY_PATHS")
    monkeypatch.setattr(xla_cpu.importlib.metadata, "entry_points", lambda group: ("cuda",))
    assert not xla_cpu.runs_on_cpu_alone()  # A plugin's entry point.
    monkeypatch.setattr(xla_cpu.importlib.metadata, "entry_points", lambda group: ())
    namespace = tmp_path / "jax_plugins"
    namespace.mkdir()
    spec = type("Spec", (), {"submodule_search_locations": [str(namespace)]})()
    monkeypatch.setattr(xla_cpu.importlib.util, "find_spec", {"jax_plugins": spec}.get)
    assert xla_cpu.runs_on_cpu_alone()  # An empty namespace: no plugin for JAX to find.
    (namespace / "xla_cuda").mkdir()
    (namespace / "xla_cuda" / "__init__.py").write_text("")
    assert not xla_cpu.runs_on_cpu_alone()
    monkeypatch.setattr(xla_cpu.importlib.util, "find_spec", {"libtpu": spec}.get)
    assert not xla_cpu.runs_on_cpu_alone()  # The libtpu package.


def _run(code: str, xla_flags: str, **env) -> list[str]:
    env = {"XLA_FLAGS": xla_flags, "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_the_convolution_compiles_as_the_settings_say():
    assert _run("import jvision" + CONVOLUTION, "") == ["False"]  # Eigen's convolution.
    if _run(CONVOLUTION, "") == ["False"]:  # XLA's own choice, without jvision.
        pytest.skip("XLA:CPU gives this convolution to Eigen on this CPU without being asked")
    assert _run("import jvision" + CONVOLUTION, xla_cpu.XLA_DEFAULTS) == ["True"]


def test_after_a_computation_the_flags_are_left_alone():
    code = (
        "import os, jax, jax.numpy as jnp\n"
        "jnp.ones(2).block_until_ready()\n"
        "import jvision\n"
        "print(repr(os.environ['XLA_FLAGS']))\n"
    )
    assert _run(code, "") == ["''"]


def test_an_accelerators_backend_keeps_xla_s_own_temp_buffer(tmp_path):
    """At import, with a TPU library named (and JAX not told to use the CPU alone), the option
    GPU and TPU compilers read is left out of `XLA_FLAGS`."""
    (tmp_path / "libtpu.so").write_bytes(b"")
    code = "import os, jvision\nprint(os.environ['XLA_FLAGS'])"
    tpu = {"TPU_LIBRARY_PATH": str(tmp_path / "libtpu.so")}
    assert _run(code, "", **tpu, JAX_PLATFORMS="") == [f"{OPTION}=-individual_convolution"]
    assert _run(code, "", **tpu) == OURS.split()  # JAX_PLATFORMS=cpu.
