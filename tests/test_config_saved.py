"""Saved configs: the keys added since filled in, and what a resume changes."""

import os

from helpers import ROOT

from jvision import config_files, config_saved

VAE = os.path.join(ROOT, "configs", "vae_mnist.py")


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
