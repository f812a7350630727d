"""Parameter sharding over an `fsdp` mesh axis: the rule, equal training, less memory per device."""

import jax
import numpy as np
import pytest
from helpers import load_config
from jax.sharding import PartitionSpec as P

from jvision import models, sharding, train, update
from jvision.data import pipeline
from jvision.errors import UserError
from jvision.safety import checkpoints, files, reader


def test_state_spec_splits_the_largest_divisible_dimension_of_large_arrays():
    assert sharding.state_spec((3, 3, 16, 32), 2, 100) == P(None, None, None, "fsdp")
    assert sharding.state_spec((64, 10), 2, 100) == P("fsdp")
    assert sharding.state_spec((5, 7, 9), 2, 10) == P()  # Nothing divisible.
    assert sharding.state_spec((8, 8), 2, 100) == P()  # Too small.
    assert sharding.state_spec((), 2, 0) == P()
    assert sharding.state_spec((64, 64), 1, 0) == P()  # No fsdp axis.
    assert sharding.state_spec((4, 6), 2, 0) == P(None, "fsdp")  # Ties: the last.


def _fsdp(config):
    config.mesh.data, config.mesh.fsdp, config.mesh.fsdp_min_size = 4, 2, 64
    return config


def test_bad_meshes_are_user_errors():
    config = load_config("vae_mnist", "tiny")
    config.mesh.fsdp = 3
    with pytest.raises(UserError, match="mesh.fsdp 3 does not divide the 8 devices"):
        sharding.make_mesh(config.mesh)
    config.mesh.fsdp, config.mesh.data = 2, 2
    with pytest.raises(UserError, match="mesh.data 2 × mesh.fsdp 2 = 4 devices, but there are 8"):
        sharding.make_mesh(config.mesh)


def test_fsdp_state_is_created_sharded_and_holds_less_per_device():
    family = models.get(load_config("vae_mnist", "tiny").model)
    held = {}
    for name, config in (
        ("data", load_config("vae_mnist", "tiny")),
        ("fsdp", _fsdp(load_config("vae_mnist", "tiny"))),
    ):
        mesh = sharding.make_mesh(config.mesh)
        layout, state = update.create_state(config, family, mesh)
        for array, expected in zip(
            jax.tree.leaves(state), jax.tree.leaves(layout.shardings), strict=True
        ):
            assert array.sharding == expected  # Created in place, not replicated then moved.
        held[name] = sharding.bytes_per_device(state)
        if name == "fsdp":
            specs = {s.spec for s in jax.tree.leaves(layout.shardings)}
            assert P() in specs and any("fsdp" in spec for spec in specs)
    assert set(held["data"].values()) == {max(held["data"].values())}  # Replicated everywhere.
    assert max(held["fsdp"].values()) < 0.75 * max(held["data"].values())


def _sgd(config):
    # Not Adam, which turns float noise in gradients that are zero in exact arithmetic (conv
    # biases cancelled by BatchNorm) into ±lr steps: see tests/test_multiprocess.py.
    config.optimizer.name, config.optimizer.learning_rate = "sgd", 1e-4
    return config


def test_fsdp_trains_to_the_data_parallel_parameters_and_resumes_sharded(tmp_path):
    plain = _sgd(load_config("vae_mnist", "tiny"))
    train.train_and_evaluate(plain, str(tmp_path / "data"))
    sharded = _sgd(_fsdp(load_config("vae_mnist", "tiny")))
    train.train_and_evaluate(sharded, str(tmp_path / "fsdp"))
    a, _ = reader.read_arrays(tmp_path / "data")
    b, _ = reader.read_arrays(tmp_path / "fsdp")
    # Tolerance. float64 is not an option here: the trainer builds float32 parameters and data.
    # Both runs do the same float32 arithmetic except the order of reductions (partial sums over
    # each device's 2 or 4 examples, then an all-reduce over 8 or 4 data shards). Over T = 4
    # steps a value (parameters: |p| ≤ 1.2; BatchNorm statistics of activations |x| ≲ 3) differs
    # - by ≤ 1 float32 ulp per step where the two updates round to neighbouring values:
    #   ≤ 4·2⁻²³·1.2 ≈ 6e-7;
    # - through the reordered sums of n ≤ 16·28·28 = 12,544 terms, whose roundings act as
    #   independent (Higham & Mary 2019: ≤ λ·√n·2⁻²⁴·Σ|terms|, λ = 5 for every sum of the run):
    #   ≤ 3.3e-5·Σ|terms|. A BatchNorm statistic takes it through 4 momentum updates of 1% (a
    #   batch mean's Σ|terms| ≲ 3): ≲ 4e-6; a parameter through 4 steps of lr = 1e-4 (a kernel
    #   gradient's Σ|terms| ≈ B·H·W·E|x|·E|∂L/∂y| ≲ 200): ≲ 3e-6.
    # ATOL = 1e-5 covers their sum, ≲ 8e-6. (The worst case, n·2⁻²⁴ instead of λ·√n·2⁻²⁴, would
    # be ~1e-4: this bound rests on the roundings of long sums not all having one sign.) A real
    # fault is larger: every tensor (but the conv biases ahead of a BatchNorm, whose gradient is
    # 0 in exact arithmetic) moves by ≥ 1.4e-4 in these 4 steps, so one of 8 shards' gradients
    # lost or counted twice moves it by ≥ 1.7e-5, most tensors by ≥ 1e-4.
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)

    # Restoring puts every array back in its shard.
    mesh = sharding.make_mesh(sharded.mesh)
    layout, state = update.create_state(sharded, models.get(sharded.model), mesh)
    data, _ = pipeline.host_batches(sharded)
    ckpts = checkpoints.Checkpoints(files.path(tmp_path / "fsdp"), sharded.keep_checkpoints)
    intact = ckpts.newest_intact()
    restored = ckpts.read(intact.step, state, data)
    ckpts.close()
    assert intact.step == 4
    for array, expected in zip(
        jax.tree.leaves(restored), jax.tree.leaves(layout.shardings), strict=True
    ):
        assert array.sharding.is_equivalent_to(expected, array.ndim)
