"""The XLA:CPU settings jvision runs with, put into `XLA_FLAGS` when jvision is imported.

XLA:CPU (jaxlib 0.10.2) hands each convolution to YNNPACK, which runs it on one thread: on a
2-core CPU the convolutional models kept 1.3-1.8 cores busy. Its Eigen convolutions split each
one across the cores: every convolutional model then keeps 1.8-1.9 busy and its step is
1.05-1.2× faster; DRAW (no convolutions) is unchanged (docs/speed.md, "Both cores"). The
results are the same computation rounded differently.

XLA reads `XLA_FLAGS` when JAX makes its first computation: importing jvision before that (as
every `python -m jvision.…` command does) is enough; after it, the settings are left out. A
setting already in `XLA_FLAGS` is the user's choice and kept: XLA's own convolutions are
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution` (`XLA_DEFAULTS`).
XLA ends a process whose `XLA_FLAGS` name an option it lacks, and experimental options come and
go: the settings are applied with the jaxlib releases they were measured on (`JAXLIB`) only.
"""

import importlib.metadata
import os
import sys

# option: value. Only XLA:CPU reads them; GPU and TPU compilations ignore them.
SETTINGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
JAXLIB = ("0.10.2",)
# The same option set to what XLA does unasked (YNNPACK's convolutions): to compare against.
XLA_DEFAULTS = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"


def flags(current: str) -> str:
    """`current` (an `XLA_FLAGS` value) with each of SETTINGS whose option it does not set."""
    added = [f"--{option}={value}" for option, value in SETTINGS.items() if option not in current]
    return " ".join([current.strip(), *added]).strip()


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
        os.environ["XLA_FLAGS"] = flags(os.environ.get("XLA_FLAGS", ""))
