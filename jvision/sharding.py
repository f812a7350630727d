"""The device mesh, and how batches and the training state are laid out on it.

`config.mesh` sizes two axes: `data` (pure data parallelism: the state is replicated) and `fsdp`
(the state is sharded too, as in ZeRO-3/FSDP). Batches are split over both axes, so every device
sees a different part of the batch. Sharding rule for the state, by shape alone (the same rule for
parameters, optimizer moments and statistics, so each moment lies with its parameter):

  an array of at least `mesh.fsdp_min_size` elements is split along its largest dimension that
  the `fsdp` axis divides (ties: the last such dimension); everything else is replicated.

With `fsdp` = 1 (the default) every array is replicated. XLA inserts the all-gathers the step
needs; the results equal the replicated step's up to float reassociation.
"""

import math

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jvision.errors import UserError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(mesh_config: ml_collections.ConfigDict | None = None) -> Mesh:
    """A `data × fsdp` mesh over every device of every process; `data: -1` takes what `fsdp`
    leaves."""
    fsdp = int(mesh_config.fsdp) if mesh_config else 1
    data = int(mesh_config.data) if mesh_config else -1
    devices = jax.device_count()
    if fsdp < 1 or devices % fsdp:
        raise UserError(f"mesh.fsdp {fsdp} does not divide the {devices} devices")
    if data == -1:
        data = devices // fsdp
    if data * fsdp != devices:
        raise UserError(
            f"mesh.data {data} × mesh.fsdp {fsdp} = {data * fsdp} devices, but there are "
            f"{devices}; use mesh.data=-1 to take the rest"
        )
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) dimension split over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def state_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> PartitionSpec:
    """Where an array of `shape` lives: split along one dimension over `fsdp`, or replicated."""
    if fsdp == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*([None] * axis), FSDP_AXIS)


def state_shardings(mesh: Mesh, abstract_state, min_size: int):
    """The `NamedSharding` of every array of a (shape-only) state, by `state_spec`."""
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, state_spec(tuple(x.shape), fsdp, min_size)), abstract_state
    )


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays split over the batch axes."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def bytes_per_device(tree) -> dict[int, int]:
    """How many bytes of `tree`'s arrays each local device holds (device id -> bytes)."""
    held: dict[int, int] = {}
    for array in jax.tree.leaves(tree):
        for shard in array.addressable_shards:
            held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
    return held
