"""Every config file loads in both variants, names a known model, data and evaluators, and
documents its command."""

import os

import pytest
from helpers import ROOT, load_config

from jvision import metrics, models
from jvision.data import catalog

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_variants(name):
    for arg in (None, "tiny"):
        config = load_config(name, arg)
        assert config.model.name in models.known()
        assert config.data.name in catalog.DATASETS
        assert all(e.type in metrics.known() for e in config.evals.values())
    tiny = load_config(name, "tiny")
    assert tiny.total_steps <= 10 and tiny.batch_size % 8 == 0
    text = open(os.path.join(ROOT, "configs", f"{name}.py")).read()
    assert f"--config=configs/{name}.py" in text  # The docstring gives the exact command.


@pytest.mark.parametrize("name", CONFIGS)
def test_every_split_a_config_reads_is_one_of_its_datasets(name):
    """The training, evaluation and every metric's split (also in the tiny variant) name splits
    the config's dataset has: a metric on a split the dataset lacks fails only at the end."""
    for arg in (None, "tiny"):
        config = load_config(name, arg)
        splits = catalog.spec(config.data.name).splits
        reads = [config.data.train_split, config.data.eval_split]
        reads += [eval_config.split for eval_config in config.evals.values()]
        for expression in reads:
            for part in expression.split("+"):
                assert part.split("[")[0] in splits, (arg, expression, splits)
