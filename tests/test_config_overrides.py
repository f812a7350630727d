"""`--config.KEY=VALUE`: values parsed as the type they replace, the closest known keys
suggested for unknown ones, and flattened configs."""

import os

import pytest
from helpers import ROOT

from jvision import config_files, config_overrides
from jvision.errors import UserError

VAE = os.path.join(ROOT, "configs", "vae_mnist.py")


def test_overrides_are_parsed_as_the_type_they_replace():
    config = config_files.load(VAE)
    config_overrides.apply_overrides(
        config,
        {
            "total_steps": "12",
            "optimizer.learning_rate": "3e-4",
            "data.shuffle": "false",
            "model.widths": "(4, 8, 16)",
            "data.data_dir": "/tmp/x",  # A placeholder (None) takes a string.
            "init_from.step": "7",
        },
    )
    assert config.total_steps == 12 and config.optimizer.learning_rate == 3e-4
    assert config.data.shuffle is False and tuple(config.model.widths) == (4, 8, 16)
    assert config.data.data_dir == "/tmp/x" and config.init_from.step == 7
    with pytest.raises(UserError, match="bad value 'many' for config key 'total_steps'"):
        config_overrides.apply_overrides(config, {"total_steps": "many"})
    with pytest.raises(UserError, match="is not a boolean"):
        config_overrides.apply_overrides(config, {"data.shuffle": "yes please"})


@pytest.mark.parametrize(
    "key, suggested",
    [
        ("total_step", "total_steps"),
        ("model.latnt_dim", "model.latent_dim"),
        ("optimizer.learning_rat", "optimizer.learning_rate"),
        ("latent_dim", "model.latent_dim"),  # The right name in another section.
    ],
)
def test_unknown_keys_get_the_closest_known_ones(key, suggested):
    with pytest.raises(UserError) as error:
        config_overrides.apply_overrides(config_files.load(VAE), {key: "1"})
    assert f"unknown config key {key!r}; did you mean" in str(error.value)
    assert suggested in str(error.value)


def test_a_key_like_nothing_gets_no_suggestion():
    with pytest.raises(UserError) as error:
        config_overrides.apply_overrides(config_files.load(VAE), {"zzzzqqqq": "1"})
    assert str(error.value) == "unknown config key 'zzzzqqqq'"


def test_flatten():
    tree = {"a": 1, "b": {"c": 2, "d": {"e": 3}}}
    assert config_overrides.flatten(tree) == {"a": 1, "b.c": 2, "b.d.e": 3}
