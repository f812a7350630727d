"""`config.init_from`: another run's sub-tree copied exactly, and every mismatch one line."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from jvision import init_from
from jvision.errors import UserError
from jvision.models import transfer
from jvision.safety import reader


@pytest.fixture
def pretrained(trained):
    return str(trained("patchvae_mnist").workdir)


def _transfer_config(pretrained_workdir=""):
    config = load_config("transfer_mnist", "tiny")
    config.init_from.workdir = pretrained_workdir
    return config


def test_init_from_copies_exactly_the_named_subtree(pretrained):
    config = _transfer_config(pretrained)
    model = transfer.build(config.model, nnx.Rngs(0))
    state = nnx.state(model)
    before = nnx.to_pure_dict(nnx.clone(state))
    init_from.apply(state, config.init_from, config.model)
    after = nnx.to_pure_dict(state)
    source, _ = reader.read_arrays(pretrained)
    # Everything under `encoder` (kernels, BatchNorm scales and statistics) is the source's ...
    source_leaves = jax.tree.leaves(source["encoder"])
    assert len(source_leaves) == len(jax.tree.leaves(after["encoder"])) > 10
    for a, b in zip(source_leaves, jax.tree.leaves(after["encoder"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # ... and nothing else changed.
    for name in ("hidden", "logits"):
        for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]), strict=True):
            np.testing.assert_array_equal(a, b)
    # A nested sub-tree works too.
    config.init_from.source, config.init_from.target = "encoder/conv1", "encoder/conv1"
    init_from.apply(nnx.state(model), config.init_from, config.model)


def test_init_from_errors_are_clear(pretrained, tmp_path):
    config = _transfer_config(str(tmp_path / "none"))
    model_state = nnx.state(transfer.build(config.model, nnx.Rngs(0)))
    with pytest.raises(UserError, match="init_from.workdir .*none: .*holds no checkpoints"):
        init_from.apply(model_state, config.init_from, config.model)
    config.init_from.workdir = pretrained
    config.init_from.source = "decoder/nothing"
    with pytest.raises(UserError, match="init_from.source 'decoder/nothing' is not in the model"):
        init_from.apply(model_state, config.init_from, config.model)
    config.init_from.source, config.init_from.target = "encoder", "head"
    with pytest.raises(UserError, match="init_from.target 'head' is not in this model"):
        init_from.apply(model_state, config.init_from, config.model)
    config.init_from.target = ""
    config.model.scale = 8  # The pretraining used 4: the trunks differ.
    wider = nnx.state(transfer.build(config.model, nnx.Rngs(0)))
    with pytest.raises(UserError, match="does not fit .*model configs differ in model.scale"):
        init_from.apply(wider, config.init_from, config.model)
