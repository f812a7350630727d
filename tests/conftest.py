"""Test setup: 8 simulated CPU devices (set before JAX is imported), and what every process of one
test run shares (pytest-xdist's workers and the `python -m jvision...` subprocesses the tests
start): a private TFDS directory, JAX's persistent compilation cache, and tiny trained workdirs.
"""

import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import tempfile
import uuid

# One directory for the whole test run: xdist's workers inherit the variables from the process
# that starts them, which removes the directory at the end. pytest keeps `tmp_path` where it
# always does (PYTEST_DEBUG_TEMPROOT), so a failed test's files stay for inspection.
_RUN = os.environ.setdefault("JVISION_TEST_RUN", uuid.uuid4().hex[:12])
_TEMP = os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
SHARED = pathlib.Path(_TEMP) / f"jvision_tests_{_RUN}"
(SHARED / "tmp").mkdir(parents=True, exist_ok=True)
# Every other temporary file of the run, in every process, goes there too: TFDS leaves an empty
# `tmp…tfds` directory behind each time it opens a dataset that is not prepared yet (its
# `DatasetInfo.initialize_from_bucket`), a few hundred a day in the system's /tmp otherwise.
os.environ["TMPDIR"] = str(SHARED / "tmp")
tempfile.tempdir = None  # Read TMPDIR again.

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# Tests spend most of their time compiling tiny programs: skip XLA's slower optimisation passes,
# and compile each program once per test run, whichever process needs it first.
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
# Not `--xla_cpu_use_fusion_emitters=false` in XLA_FLAGS: together with the skipped passes above it
# computes wrong gradients (the full-size SSD's first convolution, in float32 and float64, jax
# 0.10.2). What the suite's time is made of, and the compiler settings tried: docs/speed.md.
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(SHARED / "jax_cache")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
# jvision's datasets are prepared here once per test run; nothing goes to the user's TFDS dir.
os.environ["TFDS_DATA_DIR"] = str(SHARED / "tfds")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402
from helpers import run_main  # noqa: E402

flags.FLAGS.mark_as_parsed()  # Libraries read absl flags outside app.run in tests.


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # The first process, not one of xdist's workers.
        shutil.rmtree(SHARED, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    assert jax.device_count() == 8, "tests expect 8 simulated devices; XLA_FLAGS was set too late"


# How many generated scenes `mnist_detection` holds in this test run (the tests read at most 64
# train and 50 test scenes): the product's 16,000 + 2,500 took 14 s of the suite's CPU to
# generate and encode, for nothing.
TEST_SCENES = {"train": 400, "test": 100}


@pytest.fixture(scope="session", autouse=True)
def few_detection_scenes():
    """Prepares `mnist_detection` with TEST_SCENES before any test (every other process of the
    run then finds it prepared); the same builder and code, fewer scenes."""
    from jvision.data import mnist_detection, sources

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist_detection, "SCENES", TEST_SCENES)
        sources.open_source("mnist_detection", "test")
    yield


@pytest.fixture(scope="session")
def full_mnist_scenes():
    """`mnist_detection_full` (and the full MNIST it is made from, one wheel from PyPI) prepared
    in the test run's TFDS directory, for the model zoo's entries: all 2,500 test scenes (TFDS
    orders a split's examples by their keys' hashes, so the first 100 of 2,500 scenes are not
    those of a split of 100) and few train scenes (the entries store their exemplar bank: none
    reads them)."""
    from jvision.data import mnist_detection, sources

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist_detection, "SCENES", {"train": TEST_SCENES["train"], "test": 2500})
        sources.open_source("mnist_detection_full", "test")
    yield


@dataclasses.dataclass(frozen=True)
class Trained:
    """A finished `python -m jvision.main` run: its workdir and what it printed."""

    workdir: pathlib.Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def trained():
    """`trained(name, *args)`: `python -m jvision.main --config=configs/<name>.py:tiny ARGS`,
    run once per test run (whichever process asks first runs it; the others wait), for the tests
    that only read the workdir. A test that changes a workdir copies it first."""

    def make(name: str, *args: str) -> Trained:
        key = "_".join([name, *args]).replace("/", "_").replace("--config.", "").replace("=", "-")
        folder = SHARED / "trained" / key
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            record = folder / "run.json"
            if not record.exists():
                workdir = folder / "workdir"
                result = run_main(f"--config=configs/{name}.py:tiny", f"--workdir={workdir}", *args)
                assert result.returncode == 0, result.stderr[-3000:]
                printed = {"returncode": 0, "stdout": result.stdout, "stderr": result.stderr}
                record.write_text(json.dumps(printed))
            printed = json.loads(record.read_text())
        return Trained(folder / "workdir", **printed)

    return make
