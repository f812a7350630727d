"""Loading a config file: `FILE[:ARG]`."""

import os

import pytest
from helpers import ROOT

from jvision import config_files
from jvision.errors import UserError

VAE = os.path.join(ROOT, "configs", "vae_mnist.py")


def test_load_takes_the_argument_after_the_colon():
    assert config_files.load(VAE).total_steps == 8000
    assert config_files.load(f"{VAE}:tiny").total_steps == 4
    with pytest.raises(UserError, match="unknown config argument 'huge'"):
        config_files.load(f"{VAE}:huge")
    with pytest.raises(UserError, match="does not exist"):
        config_files.load("configs/nope.py")
