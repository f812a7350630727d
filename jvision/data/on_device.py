"""Data on the devices (`data.placement="device"`): a split's stored examples live in device memory,
and each step's batch is gathered and transformed inside the jitted step.

The host then sends only the indices of each global batch's examples, computed exactly as the host
pipeline computes them (the same Grain shuffle, epochs and rows per process), so both placements
see the same examples in the same order for the same seed. Inside jit the rows are gathered,
uint8 pixels scaled to [0, 1], and the random transforms drawn from JAX's generator (dynamic
binarization from `fold_in(key(seed + 1), step)`, flips from `fold_in(key(seed + 2), step)`),
for the whole global batch, so a run sees the same batches on any number of processes and resumes
bit-exactly (the draws are functions of the step). These draws differ from the host pipeline's
(NumPy's generator): the two placements train on equally distributed, not identical, bits.
Evaluation splits are binarized once on the host with the host pipeline's fixed seed and stored
binarized, so evaluations give the same numbers with either placement.

What the device cannot do: examples made by a family (`train_examples`, e.g. triplets) and
resized images (`data.image_size`); `placement="auto"` keeps those on the host, and chooses the
device for splits of at most `DEVICE_BUDGET_BYTES` on accelerators (see `choose`).
"""

import dataclasses
from collections.abc import Callable, Iterator

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jvision import sharding

PLACEMENTS = ("auto", "host", "device")
DEVICE_BUDGET_BYTES = 1 << 30  # A split's stored arrays up to 1 GiB go to the devices ("auto").
INDEX = "index"  # The field of the indices a device batch is gathered from.


@dataclasses.dataclass
class Input:
    """What a jitted step takes from the data: `batches`, an iterator of this process's rows of
    each global batch's inputs (the batch itself on the host, or its examples' indices); `arrays`,
    device-resident arrays ({} on the host); `materialize(arrays, inputs, step)`, run inside jit,
    which gives the batch; `spec`, the shapes and dtypes of the global batch it gives."""

    batches: Iterator
    arrays: dict
    materialize: Callable
    spec: dict
    placement: str


def as_given(arrays, inputs, step):
    """Host placement: the inputs are the batch."""
    del arrays, step
    return inputs


def stored_arrays(source) -> dict[str, np.ndarray]:
    """Every example of a random-access source, stacked: `{field: [N, ...]}` as stored (uint8
    pixels stay uint8: a quarter of float32's memory), 64-bit integers as int32, strings
    dropped."""
    examples = [source[i] for i in range(len(source))]
    arrays = {}
    for key in examples[0]:
        value = np.stack([np.asarray(e[key]) for e in examples])
        if value.dtype.kind in "USO":
            continue
        arrays[key] = value.astype(np.int32) if value.dtype == np.int64 else value
    return arrays


def choose(config: ml_collections.ConfigDict, source, device_capable: bool) -> str:
    """The placement `data.placement` asks for: "auto" takes the device when it can (no examples
    made by the family, no resizing), the split's arrays fit `DEVICE_BUDGET_BYTES`, and the
    devices are accelerators: on CPU the host pipeline measured as fast or faster end to end
    (docs/speed.md)."""
    from jvision.errors import UserError

    placement = config.data.get("placement", "auto")
    if placement not in PLACEMENTS:
        raise UserError(f"data.placement={placement!r}; use one of {PLACEMENTS}")
    if placement == "device" and not device_capable:
        raise UserError(
            "data.placement='device' cannot make this family's training examples or resize "
            "images on the devices; use data.placement='host' (or 'auto')"
        )
    if placement != "auto":
        return placement
    if not device_capable or jax.default_backend() == "cpu":
        return "host"
    example = source[0]
    size = sum(np.asarray(v).nbytes for v in example.values() if np.asarray(v).dtype.kind != "U")
    return "device" if size * len(source) <= DEVICE_BUDGET_BYTES else "host"


def transform(config: ml_collections.ConfigDict, pixel_max: int, train: bool) -> Callable:
    """`materialize(arrays, inputs, step)` for device placement: the rows at `inputs[INDEX]`,
    pixels scaled, and for training the random transforms (see the module doc)."""
    data = config.data
    binarize_key = jax.random.key(config.seed + 1)
    flip_key = jax.random.key(config.seed + 2)

    def materialize(arrays, inputs, step):
        batch = {k: jnp.take(v, inputs[INDEX], axis=0) for k, v in arrays.items()}
        image = batch["image"]
        if image.dtype == jnp.uint8:
            image = image.astype(jnp.float32) / pixel_max
        if train and data.binarize == "dynamic":
            draws = jax.random.uniform(jax.random.fold_in(binarize_key, step), image.shape)
            image = (draws < image).astype(jnp.float32)
        if train and data.random_flip:
            flip = jax.random.uniform(jax.random.fold_in(flip_key, step), image.shape[:1]) < 0.5
            image = jnp.where(flip[:, None, None, None], image[:, :, ::-1], image)
        batch["image"] = image
        if "mask" in inputs:
            batch["mask"] = inputs["mask"]
        return batch

    return materialize


class IndexRows(grain.transforms.Map):
    """A global batch of example indices -> this process's rows of it, as the device input."""

    def __init__(self, rows):
        self.rows = rows

    def map(self, indices):
        return {INDEX: np.asarray(indices[self.rows.rows], np.int32)}


def resident_input(config, source, rows, indices, mesh, pixel_max: int) -> Input:
    """The training `Input` of device placement: `indices` is the host pipeline's Grain dataset
    of global index batches (shuffled, repeated, batched), so both placements take the same
    examples in the same order."""
    arrays = jax.device_put(stored_arrays(source), sharding.replicated(mesh))
    materialize = transform(config, pixel_max, train=True)
    index_spec = {INDEX: jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
    spec = jax.eval_shape(materialize, arrays, index_spec, jnp.int32(0))
    batches = iter(indices.map(IndexRows(rows)).to_iter_dataset())
    return Input(batches, arrays, materialize, spec, "device")


def eval_arrays(whole: list[dict], mesh) -> dict:
    """An eval split as stored on the devices, from every global batch of the host pipeline read
    whole (`EvalData.as_one_process`: decoded and binarized with its fixed seed, as one process;
    every process holds the whole split)."""
    real = [{k: v[b["mask"] > 0] for k, v in b.items() if k != "mask"} for b in whole]
    arrays = {k: np.concatenate([r[k] for r in real]) for k in real[0]}
    return jax.device_put(arrays, sharding.replicated(mesh))


def eval_indices(size: int, rows, num_batches: int) -> Iterator[dict]:
    """This process's rows of each padded global eval batch: indices (0 for padding) and mask."""
    global_size = rows.global_size
    for batch in range(num_batches):
        positions = batch * global_size + np.arange(global_size)
        mask = (positions < size).astype(np.float32)
        indices = np.where(positions < size, positions, 0).astype(np.int32)
        yield {INDEX: indices[rows.rows], "mask": mask[rows.rows]}
