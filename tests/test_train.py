"""The trainer in-process: exact resume (also of a run the command line started), re-evaluation,
what it refuses, and its decisions."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from helpers import load_config

from jvision import train
from jvision.errors import UserError
from jvision.safety import reader


def _tiny(**overrides):
    config = load_config("vae_mnist", "tiny")
    config.update(overrides)
    return config


def _assert_trees_equal(a, b):
    import jax

    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_resume_is_bit_identical_to_an_unbroken_run(tmp_path, trained):
    """A 4-step run extended to 6 in-process equals a 6-step run of the command line."""
    straight = trained("vae_mnist", "--config.total_steps=6").workdir
    broken = tmp_path / "broken"
    shutil.copytree(trained("vae_mnist").workdir, broken)
    train.train_and_evaluate(_tiny(total_steps=6), str(broken))
    state_a, meta_a = reader.read_arrays(straight)
    state_b, meta_b = reader.read_arrays(broken)
    assert meta_a["step"] == meta_b["step"] == 6
    _assert_trees_equal(state_a, state_b)
    results = [json.loads((d / "results.json").read_text()) for d in (straight, broken)]
    assert results[0] == results[1]


def test_finished_run_only_reevaluates(tmp_path, trained):
    shutil.copytree(trained("vae_mnist").workdir, tmp_path, dirs_exist_ok=True)
    first = json.loads((tmp_path / "results.json").read_text())["metrics"]
    state_before, _ = reader.read_arrays(tmp_path)
    again = train.train_and_evaluate(_tiny(), str(tmp_path))
    assert first == again
    _assert_trees_equal(state_before, reader.read_arrays(tmp_path)[0])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(UserError, match="batch_size 12 is not divisible by 8 devices"):
        train.train_and_evaluate(_tiny(batch_size=12), str(tmp_path))


def test_unknown_model_lists_the_known_ones(tmp_path):
    config = _tiny()
    config.model.name = "vqvae"
    with pytest.raises(UserError, match="unknown model.name 'vqvae'; known models: .*vae"):
        train.train_and_evaluate(config, str(tmp_path))


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path, trained):
    shutil.copytree(trained("vae_mnist").workdir, tmp_path, dirs_exist_ok=True)
    config = _tiny(total_steps=8)
    config.model.latent_dim = 6
    with pytest.raises(UserError, match=r"different model \(model.latent_dim differ"):
        train.train_and_evaluate(config, str(tmp_path))
    assert reader.read_arrays(str(tmp_path))[1]["step"] == 4


def test_nan_loss_stops_without_saving_it(tmp_path, trained):
    shutil.copytree(trained("vae_mnist").workdir, tmp_path, dirs_exist_ok=True)
    config = _tiny(total_steps=8)
    config.optimizer.learning_rate = 1e30  # Adam's steps of ~lr overflow the parameters.
    with pytest.raises(UserError, match="became non-finite by step 6.*last good checkpoint is"):
        train.train_and_evaluate(config, str(tmp_path))
    assert reader.read_arrays(str(tmp_path))[1]["step"] == 4


def test_profiler_window_writes_a_trace(tmp_path):
    train.train_and_evaluate(_tiny(profile_steps=2, profile_first_step=1), str(tmp_path))
    traces = list((tmp_path / "plugins" / "profile").rglob("*.xplane.pb"))
    assert traces, "no profile written"


def test_itstime_fires_every_period_and_at_the_end():
    assert [s for s in range(1, 11) if train.itstime(s, 3, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 5) if train.itstime(s, 100, 4)] == [4]


def test_validation_rejects_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="total_steps=-1"):
        train.train_and_evaluate(_tiny(total_steps=-1), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_the_state_is_built_in_its_shardings_from_one_trace_of_the_model():
    """`create_state` traces the family's `build` once (its shapes and the jitted build share the
    trace), and the state it returns has the layout's shapes and shardings."""
    import jax

    from jvision import models, sharding, update

    config = _tiny()
    family = models.get(config.model)
    calls = []

    def build(rngs):
        calls.append(1)
        return family.build(rngs)

    counted = dataclasses.replace(family, build=build)
    layout, state = update.create_state(config, counted, sharding.make_mesh(config.mesh))
    assert len(calls) == 1
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), layout.shapes
    )
    assert jax.tree.map(lambda x: x.sharding, state) == layout.shardings


def test_the_learning_rate_is_logged_at_every_log_step(tmp_path):
    """`train/learning_rate` beside the loss: the rate of the step just taken (count step − 1)."""
    from tensorboard.backend.event_processing import event_accumulator

    from jvision import optim

    config = _tiny(log_every_steps=1)
    config.optimizer.update(schedule="cosine", warmup_steps=2, end_learning_rate=1e-4)
    train.train_and_evaluate(config, str(tmp_path))
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/learning_rate")]
    schedule = optim.learning_rate_schedule(config.optimizer, config.total_steps)
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    for step, value in logged:  # Stored as float32 by TensorBoard.
        assert value == np.float32(schedule(step - 1))
    assert logged[0][1] == 0.0 and logged[2][1] == np.float32(config.optimizer.learning_rate)
