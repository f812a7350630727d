"""Validation: the first bad value named with what is allowed."""

import os

import pytest
from helpers import ROOT

from jvision import config_checks, config_files
from jvision.errors import UserError

VAE = os.path.join(ROOT, "configs", "vae_mnist.py")


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
