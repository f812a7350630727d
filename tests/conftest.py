"""Test setup: 8 simulated CPU devices (set before JAX is imported) and a private TFDS dir."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# Tests spend most of their time compiling tiny programs: skip XLA's slower optimisation passes
# (inherited by the `python -m jvision.main` subprocesses too).
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
# Embedded MNIST is prepared here once per session; nothing is written to the user's TFDS dir.
os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="jvision_tfds_")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402
from helpers import load_config  # noqa: E402

flags.FLAGS.mark_as_parsed()  # Libraries read absl flags outside app.run in tests.


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
    assert jax.device_count() == 8, "tests expect 8 simulated devices; XLA_FLAGS was set too late"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`tiny_run(config_name, **overrides)`: the workdir of a finished tiny run of that config,
    trained once per test session (overrides as dotted keys with `__`: `model__kind="vae"`)."""
    from jvision import config_lib, train

    finished = {}

    def make(name: str, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in finished:
            config = load_config(name, "tiny")
            config_lib.apply_overrides(
                config, {k.replace("__", "."): v for k, v in overrides.items()}
            )
            workdir = tmp_path_factory.mktemp(name)
            train.train_and_evaluate(config, str(workdir))
            finished[key] = workdir
        return finished[key]

    return make
