"""Data on the devices: the same examples in the same order as the host pipeline, transforms
drawn inside jit, resumable, split over processes like the host's, and evaluations that give the
host's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from jvision import evaluate, sharding
from jvision.data import on_device, pipeline
from jvision.errors import UserError


def _config(**data):
    config = load_config("vae_mnist", "tiny")
    config.data.update(data)
    return config


def _device_batches(config, count: int, process=None):
    mesh = sharding.make_mesh()
    data = pipeline.training_input(config, mesh=mesh, process=process)
    assert data.placement == "device"
    materialize = jax.jit(data.materialize)
    batches = []
    for step in range(count):
        inputs = sharding.global_batch(mesh, next(data.batches))
        batches.append(jax.device_get(materialize(data.arrays, inputs, jnp.int32(step))))
    return batches, data


def test_the_same_examples_in_the_same_order_as_the_host_pipeline():
    config = _config(placement="device", binarize="none")
    host = pipeline.host_batches(config)[0]
    device, _ = _device_batches(config, 3)
    for batch in device:
        expected = next(host)
        assert batch.keys() == expected.keys()
        for field in expected:
            np.testing.assert_array_equal(batch[field], expected[field], err_msg=field)


def test_dynamic_binarization_draws_inside_jit_from_the_step():
    config = _config(placement="device")
    plain = pipeline.host_batches(_config(binarize="none"))[0]
    device, _ = _device_batches(config, 2)
    for batch in device:
        source = next(plain)["image"]
        assert set(np.unique(batch["image"])) <= {0.0, 1.0}
        assert not batch["image"][source == 0].any() and batch["image"][source == 1].all()
        on = batch["image"][(source > 0.3) & (source < 0.7)].mean()  # Bernoulli(intensity).
        assert 0.3 < on < 0.7
    again, _ = _device_batches(config, 2)  # A function of (seed, step): the same again.
    np.testing.assert_array_equal(again[1]["image"], device[1]["image"])


def test_resuming_gives_the_next_batches():
    config = _config(placement="device")
    batches, _ = _device_batches(config, 3)
    mesh = sharding.make_mesh()
    first = pipeline.training_input(config, mesh=mesh)
    next(first.batches)
    resumed = pipeline.training_input(config, mesh=mesh)
    resumed.batches.set_state(first.batches.get_state())
    for step in (1, 2):
        inputs = sharding.global_batch(mesh, next(resumed.batches))
        batch = jax.device_get(resumed.materialize(resumed.arrays, inputs, jnp.int32(step)))
        np.testing.assert_array_equal(batch["image"], batches[step]["image"])


def test_processes_take_their_rows_of_the_same_global_batches():
    config = _config(placement="device")
    mesh = sharding.make_mesh()
    whole = next(pipeline.training_input(config, mesh=mesh).batches)[on_device.INDEX]
    parts = [
        next(pipeline.training_input(config, mesh=mesh, process=(i, 2)).batches)[on_device.INDEX]
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_auto_keeps_the_host_on_cpu_and_for_what_the_device_cannot_make():
    mesh = sharding.make_mesh()
    assert pipeline.training_input(_config(), mesh=mesh).placement == "host"  # CPU: measured.
    detector = load_config("encoding_detector_mnist", "tiny")
    detector.data.placement = "device"
    with pytest.raises(UserError, match="cannot make this family's training examples"):
        pipeline.training_input(detector, examples=lambda source: None, mesh=mesh)
    with pytest.raises(UserError, match="data.placement='disk'"):
        pipeline.training_input(_config(placement="disk"), mesh=mesh)


@pytest.mark.parametrize("name", ["vae_mnist", "ssd_mnist"])
def test_evaluations_on_the_device_give_the_host_numbers(trained, name):
    workdir = trained(name).workdir
    host = evaluate.load(workdir, overrides={"data.placement": "host"}).evaluate()
    device = evaluate.load(workdir, overrides={"data.placement": "device"}).evaluate()
    assert device == host
