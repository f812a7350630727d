"""Grain input pipelines over TFDS sources: shuffled infinite training batches, padded eval batches.

Batches are dicts of NumPy arrays holding this process's share of the global batch:
`image` float32 [B, H, W, C] in [0, 1] (binarized to {0, 1} when `data.binarize` asks for it),
other fields as stored, 64-bit integers as int32 (`label` [B] for classification datasets,
`boxes` [B, 4, 4] and `labels` [B, 4] for detection); eval batches add `mask` float32 [B] (0 marks
padding).
"""

import logging
import math

import grain
import jax
import ml_collections
import numpy as np

from jvision import sharding
from jvision.data import sources
from jvision.errors import UserError

EVAL_BINARIZE_SEED = 1234  # Eval binarization is fixed so eval numbers depend on params only.
BINARIZE_MODES = ("dynamic", "none")


class Decode(grain.transforms.Map):
    """uint8 images -> float32 in [0, 1]; 64-bit integers -> int32; string fields dropped.
    Works on batches."""

    def __init__(self, pixel_max: int):
        self.scale = 1.0 / pixel_max

    def map(self, example):
        decoded = {}
        for key, value in example.items():
            value = np.asarray(value)
            if value.dtype.kind in "USO":  # Strings (ids, file names) cannot go to devices.
                continue
            decoded[key] = value.astype(np.int32) if value.dtype == np.int64 else value
        decoded["image"] = example["image"].astype(np.float32) * self.scale
        return decoded


class Binarize(grain.transforms.RandomMap):
    """Dynamic binarization: each pixel is 1 with probability equal to its intensity."""

    def random_map(self, example, rng: np.random.Generator):
        image = example["image"]
        return {**example, "image": (rng.random(image.shape) < image).astype(np.float32)}


class ResizeCrop(grain.transforms.Map):
    """Resizes the shorter side to `size` (bilinear) and crops the centre `size`×`size`: for
    datasets whose images differ in size (ImageNet). Works on single examples."""

    def __init__(self, size: int):
        self.size = size

    def map(self, example):
        from PIL import Image

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
    """Mirrors each image of a batch left-right with probability 1/2."""

    def random_map(self, batch, rng: np.random.Generator):
        flip = rng.random(len(batch["image"])) < 0.5
        images = np.where(flip[:, None, None, None], batch["image"][:, :, ::-1], batch["image"])
        return {**batch, "image": images}


def _local_batch_size(global_batch_size: int, name: str) -> int:
    processes = jax.process_count()
    if global_batch_size % jax.device_count():
        raise UserError(
            f"{name} {global_batch_size} is not divisible by {jax.device_count()} devices; "
            f"use a multiple of {jax.device_count()}"
        )
    return global_batch_size // processes


def _examples(data: ml_collections.ConfigDict, split: str) -> tuple[grain.MapDataset, int]:
    """This process's share of `split` (undecoded) and the size of the whole split."""
    if data.binarize not in BINARIZE_MODES:
        raise UserError(f"data.binarize={data.binarize!r}; use one of {BINARIZE_MODES}")
    source = sources.open_source(data.name, split, data.data_dir)
    ds = grain.MapDataset.source(source)
    ds = ds[jax.process_index() :: jax.process_count()]
    if len(ds) <= data.cache_max_examples:
        ds = grain.MapDataset.source([ds[i] for i in range(len(ds))])
    return ds, len(source)


def train_data(config: ml_collections.ConfigDict):
    """An infinite, checkpointable iterator of training batches, reshuffled every epoch unless
    `data.shuffle` is False (then every epoch has the stored order), and the shapes and dtypes of
    its global batches (`{field: jax.ShapeDtypeStruct}`)."""
    data = config.data
    local_batch = _local_batch_size(config.batch_size, "batch_size")
    ds, size = _examples(data, data.train_split)
    logging.info("train data: %s[%s], %d examples", data.name, data.train_split, size)
    if data.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(None)
    if data.image_size:
        ds = ds.map(ResizeCrop(data.image_size))
    # Per-example work runs on whole batches: Grain's per-element overhead dominates at MNIST size.
    ds = ds.batch(local_batch, drop_remainder=True)
    ds = ds.map(Decode(sources.spec(data.name).pixel_max))
    if data.binarize == "dynamic":
        ds = ds.random_map(Binarize(), seed=config.seed + 1)
    if data.random_flip:
        ds = ds.random_map(RandomFlip(), seed=config.seed + 2)
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
    """The whole eval split in fixed-size batches; the last ones padded and masked.

    Every process yields the same number of batches, as the sharded eval step requires.
    """

    def __init__(self, config: ml_collections.ConfigDict, split: str):
        data = config.data
        self.local_batch = _local_batch_size(config.eval_batch_size, "eval_batch_size")
        ds, self.size = _examples(data, split)
        logging.info("eval data: %s[%s], %d examples", data.name, split, self.size)
        self.dataset = ds.map(ResizeCrop(data.image_size)) if data.image_size else ds
        self.decode = Decode(sources.spec(data.name).pixel_max)
        self.binarize = Binarize() if data.binarize == "dynamic" else None
        largest_share = math.ceil(self.size / jax.process_count())
        self.num_batches = math.ceil(largest_share / self.local_batch)

    def __iter__(self):
        batches = iter(self.dataset.batch(self.local_batch, drop_remainder=False))
        rng = np.random.default_rng(EVAL_BINARIZE_SEED)
        for _ in range(self.num_batches):
            batch = next(batches, None)
            batch = self.decode.map(batch if batch is not None else self._empty())
            if self.binarize:
                batch = self.binarize.random_map(batch, rng)
            yield pad_batch(batch, self.local_batch)

    def _empty(self):
        return jax.tree.map(
            lambda x: np.zeros((0, *np.shape(x)), np.asarray(x).dtype), self.dataset[0]
        )


def summary_batch(config: ml_collections.ConfigDict, split: str, mesh) -> dict[str, jax.Array]:
    """The first eval batch of `split`, as a global array (the pictures are drawn from it)."""
    return sharding.global_batch(mesh, next(iter(EvalData(config, split))))


def pad_batch(batch, batch_size: int):
    """Pads a batch to `batch_size` rows with zeros; adds `mask` (1 for real rows)."""
    valid = len(jax.tree.leaves(batch)[0])

    def pad(x):
        return np.concatenate([x, np.zeros((batch_size - valid, *x.shape[1:]), x.dtype)])

    padded = jax.tree.map(pad, batch)
    padded["mask"] = (np.arange(batch_size) < valid).astype(np.float32)
    return padded
