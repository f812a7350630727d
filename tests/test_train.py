"""The trainer in-process: exact resume, re-evaluation, and every bad input it must refuse."""

import json
import os

import numpy as np
import pytest
from helpers import load_config

from jvision import checkpoint_reader, train
from jvision.errors import UserError


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


def test_resume_is_bit_identical_to_an_unbroken_run(tmp_path):
    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    train.train_and_evaluate(_tiny(total_steps=6, ckpt_every_steps=3), straight)
    train.train_and_evaluate(_tiny(total_steps=3, ckpt_every_steps=3), broken)
    assert checkpoint_reader.load_model(broken)[1]["step"] == 3
    train.train_and_evaluate(_tiny(total_steps=6, ckpt_every_steps=3), broken)

    state_a, meta_a = checkpoint_reader.load_model(straight)
    state_b, meta_b = checkpoint_reader.load_model(broken)
    assert meta_a["step"] == meta_b["step"] == 6
    _assert_trees_equal(state_a, state_b)
    results = [json.load(open(os.path.join(d, "results.json"))) for d in (straight, broken)]
    assert results[0] == results[1]


def test_finished_run_only_reevaluates(tmp_path):
    workdir = str(tmp_path)
    first = train.train_and_evaluate(_tiny(), workdir)
    state_before, _ = checkpoint_reader.load_model(workdir)
    again = train.train_and_evaluate(_tiny(), workdir)
    assert first == again
    _assert_trees_equal(state_before, checkpoint_reader.load_model(workdir)[0])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(UserError, match="batch_size 12 is not divisible by 8 devices"):
        train.train_and_evaluate(_tiny(batch_size=12), str(tmp_path))


def test_unknown_model_lists_the_known_ones(tmp_path):
    config = _tiny()
    config.model.name = "vqvae"
    with pytest.raises(UserError, match="unknown model.name 'vqvae'; known models: .*vae"):
        train.train_and_evaluate(config, str(tmp_path))


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path):
    train.train_and_evaluate(_tiny(), str(tmp_path))
    config = _tiny(total_steps=8)
    config.model.latent_dim = 6
    with pytest.raises(UserError, match=r"different model \(model.latent_dim differ"):
        train.train_and_evaluate(config, str(tmp_path))
    assert checkpoint_reader.load_model(str(tmp_path))[1]["step"] == 4


def test_nan_loss_stops_without_saving_it(tmp_path):
    train.train_and_evaluate(_tiny(total_steps=2), str(tmp_path))
    config = _tiny(total_steps=6)
    config.optimizer.learning_rate = 1e30  # Adam's steps of ~lr overflow the parameters.
    with pytest.raises(UserError, match="became non-finite by step 4.*last good checkpoint is"):
        train.train_and_evaluate(config, str(tmp_path))
    assert checkpoint_reader.load_model(str(tmp_path))[1]["step"] == 2


def test_profiler_window_writes_a_trace(tmp_path):
    train.train_and_evaluate(_tiny(profile_steps=2, profile_first_step=1), str(tmp_path))
    traces = list((tmp_path / "plugins" / "profile").rglob("*.xplane.pb"))
    assert traces, "no profile written"
