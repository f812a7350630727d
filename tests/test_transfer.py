"""The recognition protocol: pretrained encoder loaded and frozen, head trained, errors clear."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from jvision import train
from jvision.models import transfer
from jvision.safety import reader


@pytest.fixture
def pretrained(trained):
    return str(trained("patchvae_mnist").workdir)


def _transfer_config(pretrained_workdir="", freeze=-1):
    config = load_config("transfer_mnist", "tiny")
    config.init_from.workdir = pretrained_workdir
    config.model.freeze_stages = freeze
    return config


def _trainable_paths(config, model):
    state = nnx.state(model, transfer.trainable(config, model))
    return {
        "/".join(str(getattr(k, "key", k)) for k in path) for path, _ in nnx.to_flat_state(state)
    }


def test_freezing_selects_the_head_and_unfrozen_convs_only():
    config = _transfer_config(freeze=-1)
    config.model.scale = 8
    model = transfer.build(config.model, nnx.Rngs(0))
    assert all(p.startswith(("hidden", "logits")) for p in _trainable_paths(config.model, model))
    config.model.freeze_stages = 1  # The stem only.
    paths = _trainable_paths(config.model, transfer.build(config.model, nnx.Rngs(0)))
    assert "encoder/conv1/kernel" not in paths
    assert "encoder/layers/0/0/conv1/kernel" in paths
    assert not any(p.endswith(("scale", "bias")) and p.startswith("encoder") for p in paths)


def test_transfer_keeps_the_pretrained_encoder_and_trains_the_head(pretrained, trained):
    workdir = trained("transfer_mnist", f"--config.init_from.workdir={pretrained}").workdir
    source, _ = reader.read_arrays(pretrained)
    after, _ = reader.read_arrays(workdir)
    for a, b in zip(
        jax.tree.leaves(source["encoder"]), jax.tree.leaves(after["encoder"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # Weights and BatchNorm statistics untouched.
    initial = transfer.build(_transfer_config(pretrained).model, nnx.Rngs(0))
    assert not np.allclose(initial.hidden.kernel[...], after["hidden"]["kernel"])


def test_cifar100_pretraining_and_transfer_run_on_mocked_tfds(tmp_path):
    import tensorflow_datasets as tfds

    pretrain = load_config("patchvae_cifar100", "tiny")
    pretrain.data.data_dir = str(tmp_path / "tfds")
    pretrain.eval_every_steps = pretrain.total_steps  # Each run evaluates once, at its end.
    with tfds.testing.mock_data(num_examples=64):
        train.train_and_evaluate(pretrain, str(tmp_path / "pretrained"))
        config = load_config("transfer_cifar100", "tiny")
        config.data.data_dir = str(tmp_path / "tfds")
        config.init_from.workdir = str(tmp_path / "pretrained")
        config.eval_every_steps = config.total_steps
        results = train.train_and_evaluate(config, str(tmp_path / "transfer"))
    assert set(results) == {"test/loss", "test/top1"}
