"""jvision: JAX/Flax generative and detection models for computer vision."""

from jvision import host_memory as _host_memory
from jvision import xla_cpu as _xla_cpu
from jvision.safety import stops as _stops

__version__ = "0.1.0"

# `python -m jvision.<command>`: SIGTERM and Ctrl-C end it with one line and exit status 75 from
# the first instant, before the command's own imports (JAX, Orbax, ...) take seconds.
if _stops.starting_command():
    _stops.stop_while_starting()

_xla_cpu.apply()
_host_memory.apply()
