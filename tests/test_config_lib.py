"""The defaults config files build on: the likelihood evaluation and the tiny variant."""

import os

import ml_collections
from helpers import ROOT

from jvision import config_lib

VAE = os.path.join(ROOT, "configs", "vae_mnist.py")


def test_importance_sampling_is_final_only_and_shrinks_for_tests():
    config = config_lib.base_config()
    config_lib.importance_sampled_nll(config, 5000, 250, 16)
    assert config.evals.nll.final_only and config.evals.nll.prefix == "test"
    config_lib.shrink_for_tests(config)
    assert config.evals.nll.num_samples == 4 and config.evals.nll.split == "test[:16]"
    assert isinstance(config.evals.nll, ml_collections.ConfigDict)
