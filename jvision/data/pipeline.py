"""Grain input pipelines over TFDS sources: shuffled infinite training batches, padded eval batches.

Every process computes the same *global* batches of example indices (the whole split shuffled
with the config's seed, cut into `batch_size` rows), and reads and decodes only its own block of
rows: process p of n takes rows [p·B/n, (p+1)·B/n). The mesh's batch sharding puts those rows on
that process's devices, so the global batch is the one a single process would have built, and a
run gives the same batches on any number of processes. Random transforms draw for the whole
global batch from a seed shared by all processes and keep their rows.

Batches are dicts of NumPy arrays holding this process's rows: `image` float32 [B, H, W, C] in
[0, 1] (binarized to {0, 1} when `data.binarize` asks for it), other fields as stored, 64-bit
integers as int32 (`label` [B] for classification datasets; `boxes` [B, M, 4] and `labels`
[B, M] for detection, M the dataset's most objects per image, -1 labels padding: 4 for the MNIST
scenes, 24 for KITTI); eval batches add `mask` float32 [B] (0 marks padding).
"""

import logging
import math

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from jvision import logs
from jvision.data import catalog, on_device, sources
from jvision.errors import UserError

log = logging.getLogger(__name__)

EVAL_BINARIZE_SEED = 1234  # Eval binarization is fixed so eval numbers depend on params only.
BINARIZE_MODES = ("dynamic", "none")


class Decode(grain.transforms.Map):
    """uint8 arrays (images, crops) -> float32 in [0, 1]; 64-bit integers -> int32; string fields
    dropped. Works on batches."""

    def __init__(self, pixel_max: int):
        self.scale = 1.0 / pixel_max

    def map(self, example):
        decoded = {}
        for key, value in example.items():
            value = np.asarray(value)
            if value.dtype.kind in "USO":  # Strings (ids, file names) cannot go to devices.
                continue
            if value.dtype == np.uint8:
                value = value.astype(np.float32) * self.scale
            decoded[key] = value.astype(np.int32) if value.dtype == np.int64 else value
        return decoded


class ProcessRows:
    """Which rows of a global batch of `global_size` one process holds: process `index` of
    `count` (default: this process of `jax.process_count()`) holds `rows`."""

    def __init__(self, global_size: int, index: int | None = None, count: int | None = None):
        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
        local = global_size // count
        self.global_size = global_size
        self.rows = slice(index * local, (index + 1) * local)

    def draws(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform draws for the whole global batch (`shape` per row); this process's rows."""
        return rng.random((self.global_size, *shape))[self.rows]


def binarize(images: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Bernoulli samples of pixel intensities: 1 where the uniform draw is below the pixel."""
    return (draws < images).astype(np.float32)


class Binarize(grain.transforms.RandomMap):
    """Dynamic binarization: each pixel is 1 with probability equal to its intensity. Works on
    this process's rows of a global batch."""

    def __init__(self, rows: ProcessRows):
        self.rows = rows

    def random_map(self, batch, rng: np.random.Generator):
        image = batch["image"]
        return {**batch, "image": binarize(image, self.rows.draws(rng, image.shape[1:]))}


class ResizeCrop(grain.transforms.Map):
    """Resizes the shorter side to `size` (bilinear) and crops the centre `size`×`size`: for
    datasets whose images differ in size (ImageNet). Works on single examples."""

    def __init__(self, size: int):
        self.size = size

    def map(self, example):
        image = example["image"]
        height, width = image.shape[:2]
        scale = self.size / min(height, width)
        resized_h, resized_w = (
            max(self.size, round(height * scale)),
            max(self.size, round(width * scale)),
        )
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        resized = np.asarray(pil.resize((resized_w, resized_h), Image.BILINEAR))
        resized = resized.reshape(resized_h, resized_w, image.shape[-1])
        top, left = (resized_h - self.size) // 2, (resized_w - self.size) // 2
        return {**example, "image": resized[top : top + self.size, left : left + self.size]}


class RandomFlip(grain.transforms.RandomMap):
    """Mirrors each image of a batch left-right with probability 1/2. Works on this process's
    rows of a global batch."""

    def __init__(self, rows: ProcessRows):
        self.rows = rows

    def random_map(self, batch, rng: np.random.Generator):
        flip = self.rows.draws(rng, ()) < 0.5
        images = np.where(flip[:, None, None, None], batch["image"][:, :, ::-1], batch["image"])
        return {**batch, "image": images}


def read(source, indices, resize: "ResizeCrop | None") -> dict[str, np.ndarray]:
    """The examples at `indices` of a random-access source, stacked into a batch."""
    indices = [int(i) for i in indices]
    examples = (
        source.__getitems__(indices)
        if hasattr(source, "__getitems__")
        else [source[i] for i in indices]
    )
    if resize:
        examples = [resize.map(example) for example in examples]
    return stack(examples)


class ReadRows(grain.transforms.Map):
    """A global batch of example indices -> this process's rows of it, read and stacked."""

    def __init__(self, source, rows: ProcessRows, resize: "ResizeCrop | None"):
        self.source, self.rows, self.resize = source, rows, resize

    def map(self, indices):
        return read(self.source, indices[self.rows.rows], self.resize)


def stack(examples: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


class MakeRows(grain.transforms.RandomMap):
    """A global batch of indices -> this process's rows, each made by `make(index, rng)` with an
    rng of its own (drawn for the whole global batch, so rows do not depend on the processes)."""

    def __init__(self, make, rows: ProcessRows):
        self.make, self.rows = make, rows

    def random_map(self, indices, rng: np.random.Generator):
        seeds = rng.integers(2**63, size=self.rows.global_size)[self.rows.rows]
        mine = indices[self.rows.rows]
        rngs = [np.random.default_rng(seed) for seed in seeds]
        return stack([self.make(int(i), rng) for i, rng in zip(mine, rngs, strict=True)])


def check_batch_size(global_batch_size: int, name: str) -> None:
    """A global batch must split evenly over the devices."""
    if global_batch_size % jax.device_count():
        raise UserError(
            f"{name} {global_batch_size} is not divisible by {jax.device_count()} devices; "
            f"use a multiple of {jax.device_count()}"
        )


def _source(data: ml_collections.ConfigDict, split: str):
    """A random-access source of `split` (undecoded examples), kept in memory as it is read
    when the split has at most `data.cache_max_examples` examples (TFDS's reader costs ~140 µs
    per example, which would compete with the train step for the CPU after the first epoch)."""
    if data.binarize not in BINARIZE_MODES:
        raise UserError(f"data.binarize={data.binarize!r}; use one of {BINARIZE_MODES}")
    source = sources.open_source(data.name, split, data.data_dir)
    if len(source) <= data.cache_max_examples:
        source = Remembered(source)
    return source


class Remembered:
    """A random-access source that keeps each example the first time it is read: a short run
    reads only what it uses (reading all 16,000 scenes first would take a tiny run 2 s), a long
    one reads each example once."""

    def __init__(self, source):
        self._source = source
        self._examples = [None] * len(source)

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index):
        example = self._examples[index]
        if example is None:
            example = self._examples[index] = self._source[index]
        return example


def _index_batches(config: ml_collections.ConfigDict, size: int) -> grain.MapDataset:
    """The global batches of example indices both placements read: the split shuffled with the
    config's seed (reshuffled every epoch unless `data.shuffle` is False), repeated, batched."""
    indices = grain.MapDataset.range(size)
    if config.data.shuffle:
        indices = indices.shuffle(seed=config.seed)
    return indices.repeat(None).batch(config.batch_size, drop_remainder=True)


def training_input(
    config: ml_collections.ConfigDict, examples=None, mesh=None, process: tuple | None = None
) -> on_device.Input:
    """The training data as a jitted step takes it (`on_device.Input`), placed as
    `data.placement` says: on the host (`host_batches`) or on the devices of `mesh`
    (`jvision.data.on_device`)."""
    data = config.data
    source = _source(data, data.train_split)
    capable = examples is None and not data.image_size
    placement = on_device.choose(config, source, capable) if mesh is not None else "host"
    size = logs.count(len(source), "example")
    log.info("train data: %s[%s], %s, on the %s", data.name, data.train_split, size, placement)
    if placement == "device":
        check_batch_size(config.batch_size, "batch_size")
        rows = ProcessRows(config.batch_size, *(process or ()))
        indices = _index_batches(config, len(source))
        pixel_max = catalog.spec(data.name).pixel_max
        return on_device.resident_input(config, source, rows, indices, mesh, pixel_max)
    batches, spec = host_batches(config, examples, process, source=source)
    return on_device.Input(batches, {}, on_device.as_given, spec, "host")


def host_batches(
    config: ml_collections.ConfigDict, examples=None, process: tuple | None = None, source=None
):
    """An infinite, checkpointable iterator of this process's rows of the training batches, read
    and transformed on the host, and the shapes and dtypes of the global batches
    (`{field: jax.ShapeDtypeStruct}`).

    `examples(source)`, when given, returns the maker `(index, rng) -> example` of the training
    examples (e.g. a model family's triplets made from detection scenes); without it the stored
    examples are the training examples. `process` = (index, count) says whose rows to read
    (default: this process's, of `jax.process_count()`)."""
    data = config.data
    check_batch_size(config.batch_size, "batch_size")
    source = _source(data, data.train_split) if source is None else source
    rows = ProcessRows(config.batch_size, *(process or ()))
    indices = _index_batches(config, len(source))
    resize = ResizeCrop(data.image_size) if data.image_size else None
    make = examples(source) if examples else None
    if make is None:
        ds = indices.map(ReadRows(source, rows, resize))
    else:
        ds = indices.random_map(MakeRows(make, rows), seed=config.seed + 3)
    ds = ds.map(Decode(catalog.spec(data.name).pixel_max))
    if data.binarize == "dynamic":
        ds = ds.random_map(Binarize(rows), seed=config.seed + 1)
    if data.random_flip:
        ds = ds.random_map(RandomFlip(rows), seed=config.seed + 2)
    spec = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((config.batch_size, *x.shape[1:]), x.dtype), ds[0]
    )
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_batches)
    )
    if data.num_workers > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    return iter(iter_ds), spec


class EvalData:
    """The whole eval split in global batches of `eval_batch_size`; the last ones padded and
    masked, so every example counts exactly once over all processes.

    Every process yields the same number of batches (its rows of each global batch), as the
    sharded eval step requires.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        split: str,
        examples=None,
        process: tuple | None = None,
        mesh=None,
    ):
        """`examples(source)`, when given, returns the maker `(index, rng) -> example` of the
        examples to evaluate (e.g. exemplar crops of a split's scenes); `process` = (index,
        count) as for `train_data`. With a `mesh`, `data.placement` may put the split on its
        devices: iterating then yields indices and a mask, and `arrays` and `materialize`
        (run inside jit) give the batch (`jvision.data.on_device`)."""
        data = config.data
        check_batch_size(config.eval_batch_size, "eval_batch_size")
        self.source = _source(data, split)
        self.make = examples(self.source) if examples else None
        self.size = len(self.source)
        self.rows = ProcessRows(config.eval_batch_size, *(process or ()))
        self.resize = ResizeCrop(data.image_size) if data.image_size else None
        self.decode = Decode(catalog.spec(data.name).pixel_max)
        self.binarize = data.binarize == "dynamic"
        self.num_batches = math.ceil(self.size / config.eval_batch_size)
        capable = self.make is None and not data.image_size
        placement = on_device.choose(config, self.source, capable) if mesh is not None else "host"
        log.debug(
            "eval data: %s[%s], %d examples, on the %s", data.name, split, self.size, placement
        )
        self.arrays, self.materialize = {}, on_device.as_given
        if placement == "device":
            self.arrays = on_device.eval_arrays(self.as_one_process(), mesh)
            self.materialize = on_device.transform(config, 1, train=False)

    def __len__(self) -> int:
        """How many global batches the split makes."""
        return self.num_batches

    def as_one_process(self) -> list[dict[str, np.ndarray]]:
        """Every global batch whole, as one process reads them on the host."""
        return list(self._host_batches(ProcessRows(self.rows.global_size, 0, 1)))

    def __iter__(self):
        if self.arrays:
            return on_device.eval_indices(self.size, self.rows, self.num_batches)
        return self._host_batches(self.rows)

    def _host_batches(self, rows: ProcessRows):
        global_size, local_size = rows.global_size, rows.rows.stop - rows.rows.start
        rng = np.random.default_rng(EVAL_BINARIZE_SEED)
        for index in range(self.num_batches):
            start = index * global_size
            real = min(global_size, self.size - start)  # Rows of this global batch that exist.
            mine = range(start + rows.rows.start, start + min(rows.rows.stop, real))
            batch = self.decode.map(self._read(mine))
            if self.binarize:  # Draws for the whole global batch: its padding rows' are unused.
                draws = rows.draws(rng, batch["image"].shape[1:])[: len(mine)]
                batch["image"] = binarize(batch["image"], draws)
            yield pad_batch(batch, local_size)

    def _read(self, indices: range) -> dict[str, np.ndarray]:
        if not len(indices):
            return jax.tree.map(lambda x: x[:0], self._read(range(1)))
        if self.make:  # Deterministic: each example's rng is seeded by its index.
            return stack([self.make(i, np.random.default_rng(i)) for i in indices])
        return read(self.source, indices, self.resize)


def first_batch(config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """This process's rows of the first eval batch of `split` (the pictures are drawn from it)."""
    return next(iter(EvalData(config, split)))


def pad_batch(batch, batch_size: int):
    """Pads a batch to `batch_size` rows with zeros; adds `mask` (1 for real rows)."""
    valid = len(jax.tree.leaves(batch)[0])

    def pad(x):
        return np.concatenate([x, np.zeros((batch_size - valid, *x.shape[1:]), x.dtype)])

    padded = jax.tree.map(pad, batch)
    padded["mask"] = (np.arange(batch_size) < valid).astype(np.float32)
    return padded
