"""Every config file loads in both variants, names a known model, data and evaluators, and
documents its command."""

import os

import pytest
from helpers import ROOT, load_config

from jvision import metrics, models
from jvision.data import sources

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_variants(name):
    for arg in (None, "tiny"):
        config = load_config(name, arg)
        assert config.model.name in models.known()
        assert config.data.name in sources.DATASETS
        assert all(e.type in metrics.known() for e in config.evals.values())
    tiny = load_config(name, "tiny")
    assert tiny.total_steps <= 10 and tiny.batch_size % 8 == 0
    text = open(os.path.join(ROOT, "configs", f"{name}.py")).read()
    assert f"--config=configs/{name}.py" in text  # The docstring gives the exact command.
