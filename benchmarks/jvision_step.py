"""jvision's train step for a config, compiled on the config's first training batch: what
`step_time.py`, `compare.py`, `cpu_levers.py` and `compile_options.py` time."""

import dataclasses
import hashlib
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jvision import config_files, models, sharding, update
from jvision.data import pipeline

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@dataclasses.dataclass
class CompiledStep:
    compiled: Any  # (state, metrics, batch, step) -> (state, metrics); state and metrics donated
    compile_s: float
    state: Any
    metrics: Any
    batch: Any  # The first batch, on the mesh.
    host_batch: dict  # The batch the step trains on, as NumPy arrays (what the twins take).
    data: Any  # The training iterator, after that batch.
    arrays: Any  # The data's device arrays ({} when the data are on the host).
    placement: str  # Where the data are: "host" or "device".

    def run(self, first: int, count: int) -> None:
        """Takes steps `first` .. `first + count - 1` on the one batch and waits for them."""
        for step in range(first, first + count):
            self.state, self.metrics = self.compiled(
                self.state, self.metrics, self.arrays, self.batch, jnp.int32(step)
            )
        jax.block_until_ready((self.state, self.metrics))


def config_by_name(name: str):
    """A config of configs/ by its file's name, with its argument if any (`vae_mnist:tiny`)."""
    file, colon, arg = name.partition(":")
    return config_files.load(os.path.join(CONFIGS, file + ".py") + colon + arg)


def digest(state) -> str:
    """A short hash of every array in `state`: equal digests, the same bits."""
    sha = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        sha.update(np.asarray(leaf).tobytes())
    return sha.hexdigest()[:16]


def compile_step(config, compiler_options: dict | None = None) -> CompiledStep:
    """The config's train step, compiled; `compiler_options` ({XLA debug option: value}) override
    the process's `XLA_FLAGS` for this compilation."""
    family = models.get(config.model)
    mesh = sharding.make_mesh(config.mesh)
    data = pipeline.training_input(config, family.train_examples, mesh)
    inputs = next(data.batches)
    batch = sharding.global_batch(mesh, inputs)
    host_batch = inputs  # On the device, the batch the step makes from those indices:
    if data.placement == "device":
        made = jax.jit(data.materialize)(data.arrays, batch, jnp.int32(0))
        host_batch = jax.tree.map(np.asarray, jax.device_get(made))
    layout, state = update.create_state(config, family, mesh)
    step_fn, metrics_class = update.make_train_step(config, family, layout, mesh, data)
    metrics = jax.device_put(metrics_class.empty(), sharding.replicated(mesh))
    start = time.perf_counter()
    lowered = step_fn.lower(state, metrics, data.arrays, batch, jnp.int32(0))
    compiled = lowered.compile(compiler_options)
    compile_s = time.perf_counter() - start
    return CompiledStep(
        compiled,
        compile_s,
        state,
        metrics,
        batch,
        host_batch,
        data.batches,
        data.arrays,
        data.placement,
    )
