"""jvision's XLA:CPU settings: added to XLA_FLAGS at import unless the user set the option or JAX
already computed, and what they select (Eigen's convolutions, not YNNPACK's) compiled as such."""

import subprocess
import sys

import pytest
from helpers import ROOT

from jvision import xla_cpu

OPTION = "--xla_cpu_experimental_ynn_fusion_type"
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
    assert xla_cpu.flags("") == f"{OPTION}=-individual_convolution"
    devices = "--xla_force_host_platform_device_count=8"
    assert xla_cpu.flags(f" {devices} ") == f"{devices} {OPTION}=-individual_convolution"
    mine = f"{devices} {xla_cpu.XLA_DEFAULTS}"
    assert xla_cpu.flags(mine) == mine


def _run(code: str, xla_flags: str) -> list[str]:
    env = {"XLA_FLAGS": xla_flags, "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
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
