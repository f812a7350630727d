"""Configs: loading `FILE[:ARG]`, overrides parsed as the type they replace, suggestions for
unknown keys, validation, the keys saved runs lack, and what a resume changes."""

import os

import ml_collections
import pytest
from helpers import ROOT

from jvision import config_checks, config_files, config_lib, config_overrides, config_saved
from jvision.errors import UserError

VAE = os.path.join(ROOT, "configs", "vae_mnist.py")


def test_load_takes_the_argument_after_the_colon():
    assert config_files.load(VAE).total_steps == 8000
    assert config_files.load(f"{VAE}:tiny").total_steps == 4
    with pytest.raises(UserError, match="unknown config argument 'huge'"):
        config_files.load(f"{VAE}:huge")
    with pytest.raises(UserError, match="does not exist"):
        config_files.load("configs/nope.py")


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


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("seed", -1, "use 0 to 4294967295"),
        ("total_steps", -2, "use 0 or more"),
        ("batch_size", 0, "use 1 or more"),
        ("eval_every_steps", 0, "use 1 or more"),
        ("num_summary_images", -1, "use 0 or more"),
    ],
)
def test_validation_names_the_bad_value_and_what_is_allowed(key, value, message):
    config = config_files.load(VAE)
    config[key] = value
    with pytest.raises(UserError, match=f"{key}={value}: {message}"):
        config_checks.validate(config)


def test_a_nan_rate_is_refused():
    config = config_files.load(VAE)
    config.optimizer.learning_rate = float("nan")
    with pytest.raises(UserError, match="optimizer.learning_rate=nan"):
        config_checks.validate(config)


def test_saved_configs_get_the_keys_added_since():
    saved = config_files.load(VAE).to_dict()
    del saved["mesh"], saved["optimizer"]["clip_norm"]
    config = config_saved.from_saved(saved)
    assert config.mesh.fsdp == 1 and config.optimizer.clip_norm == 0.0


def test_model_differences_and_settings_changes():
    old = config_files.load(VAE).to_dict()
    new = config_files.load(VAE).to_dict()
    new["model"]["latent_dim"] = 8
    new["total_steps"] = 9000
    assert config_saved.model_differences(old["model"], new["model"]) == ["latent_dim"]
    assert config_saved.settings_changes(old, new) == ["total_steps: 8000 -> 9000"]


def test_flatten():
    tree = {"a": 1, "b": {"c": 2, "d": {"e": 3}}}
    assert config_overrides.flatten(tree) == {"a": 1, "b.c": 2, "b.d.e": 3}


def test_importance_sampling_is_final_only_and_shrinks_for_tests():
    config = config_lib.base_config()
    config_lib.importance_sampled_nll(config, 5000, 250, 16)
    assert config.evals.nll.final_only and config.evals.nll.prefix == "test"
    config_lib.shrink_for_tests(config)
    assert config.evals.nll.num_samples == 4 and config.evals.nll.split == "test[:16]"
    assert isinstance(config.evals.nll, ml_collections.ConfigDict)
