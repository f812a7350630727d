"""Fairness of the speed comparison: each PyTorch twin (benchmarks/torch_models) computes the same
training loss, gradients and optimizer step as its jvision model, from the same weights, batch and
noise. Compared in float64 on both sides; the tolerances and why are in `helpers`."""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import check_twin, load_config  # noqa: E402

from jvision import config_overrides  # noqa: E402
from jvision.data import embedded_mnist, mnist_detection  # noqa: E402

BATCH = 4  # Enough for every BatchNorm and loss term; the full-size cases cost ~2× more at 8.

# (config, variant, overrides, train step the loss is computed at)
CASES = [
    ("vae_mnist", "tiny", {}, 0),
    ("vae_mnist", None, {}, 0),
    ("draw_mnist", "tiny", {}, 0),
    ("draw_mnist", "tiny", {"model.use_attention": False}, 0),
    ("draw_mnist_small", None, {}, 0),
    ("ssd_mnist", None, {}, 0),
    ("patchvae_mnist", "tiny", {"model.hard": True, "model.edge_weighted": True}, 2500),
    ("patchvae_mnist", "tiny", {"model.kind": "vae"}, 0),
    ("patchvae_mnist", None, {}, 1000),
    ("transfer_mnist", "tiny", {}, 0),
    ("transfer_mnist", "tiny", {"model.freeze_stages": 1}, 0),
]


def _case_id(case):
    name, variant, overrides, step = case
    parts = [name, variant or "default", *(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())]
    return "-".join(parts + ([f"step{step}"] if step else []))


@functools.cache
def _digits():
    return embedded_mnist.load_digits()


def make_batch(config, batch_size: int, seed: int = 0) -> dict:
    """A batch as jvision's pipeline makes it, from the embedded MNIST digits."""
    images, labels = _digits()
    rng = np.random.default_rng(seed)
    if config.model.name == "ssd":
        scenes, boxes, classes, _ = mnist_detection.generate_scenes(
            images[:400, ..., 0], labels[:400], batch_size, seed
        )
        return {
            "image": scenes[..., None].astype(np.float32) / 255,
            "boxes": boxes,
            "labels": classes.astype(np.int32),
        }
    pick = rng.choice(len(images), batch_size, replace=False)
    x = images[pick].astype(np.float32) / 255
    if config.data.binarize == "dynamic":
        x = (rng.random(x.shape) < x).astype(np.float32)
    batch = {"image": x}
    if config.model.name == "transfer":
        batch["label"] = labels[pick].astype(np.int32)
    return batch


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_twin_matches_jvision(case):
    name, variant, overrides, step = case
    config = load_config(name, variant)
    config_overrides.apply_overrides(config, overrides)
    print(f"\n{_case_id(case)}: {check_twin(config, make_batch(config, BATCH), step)}")
