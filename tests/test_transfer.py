"""The recognition protocol: pretrained encoder loaded and frozen, head trained, errors clear."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from jvision import checkpoint_reader, init_from, train
from jvision.errors import UserError
from jvision.models import transfer


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pretrained"))
    train.train_and_evaluate(load_config("patchvae_mnist", "tiny"), workdir)
    return workdir


def _transfer_config(pretrained_workdir="", freeze=-1):
    config = load_config("transfer_mnist", "tiny")
    config.init_from.workdir = pretrained_workdir
    config.model.freeze_stages = freeze
    return config


def _trainable_paths(model):
    state = nnx.state(model, transfer.trainable(model))
    return {
        "/".join(str(getattr(k, "key", k)) for k in path) for path, _ in nnx.to_flat_state(state)
    }


def test_freezing_selects_the_head_and_unfrozen_convs_only():
    config = _transfer_config(freeze=-1)
    config.model.scale = 8
    model = transfer.build(config.model, nnx.Rngs(0))
    assert all(p.startswith(("hidden", "logits")) for p in _trainable_paths(model))
    config.model.freeze_stages = 1  # The stem only.
    paths = _trainable_paths(transfer.build(config.model, nnx.Rngs(0)))
    assert "encoder/conv1/kernel" not in paths
    assert "encoder/layers/0/0/conv1/kernel" in paths
    assert not any(p.endswith(("scale", "bias")) and p.startswith("encoder") for p in paths)


def test_transfer_keeps_the_pretrained_encoder_and_trains_the_head(pretrained, tmp_path):
    results = train.train_and_evaluate(_transfer_config(pretrained), str(tmp_path))
    assert 0 <= results["test/top1"] <= 1
    source, _ = checkpoint_reader.load_model(pretrained)
    trained, _ = checkpoint_reader.load_model(str(tmp_path))
    for a, b in zip(
        jax.tree.leaves(source["encoder"]), jax.tree.leaves(trained["encoder"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # Weights and BatchNorm statistics untouched.
    initial = transfer.build(_transfer_config(pretrained).model, nnx.Rngs(0))
    assert not np.allclose(initial.hidden.kernel[...], trained["hidden"]["kernel"])


def test_init_from_copies_exactly_the_named_subtree(pretrained):
    config = _transfer_config(pretrained)
    model = transfer.build(config.model, nnx.Rngs(0))
    state = nnx.state(model)
    before = nnx.to_pure_dict(nnx.clone(state))
    init_from.apply(state, config.init_from, config.model)
    after = nnx.to_pure_dict(state)
    source, _ = checkpoint_reader.load_model(pretrained)
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


def test_cifar100_pretraining_and_transfer_run_on_mocked_tfds(tmp_path):
    import tensorflow_datasets as tfds

    pretrain = load_config("patchvae_cifar100", "tiny")
    pretrain.data.data_dir = str(tmp_path / "tfds")
    with tfds.testing.mock_data(num_examples=64):
        train.train_and_evaluate(pretrain, str(tmp_path / "pretrained"))
        config = load_config("transfer_cifar100", "tiny")
        config.data.data_dir = str(tmp_path / "tfds")
        config.init_from.workdir = str(tmp_path / "pretrained")
        results = train.train_and_evaluate(config, str(tmp_path / "transfer"))
    assert set(results) == {"test/loss", "test/top1"}
