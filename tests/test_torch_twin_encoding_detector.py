"""Fairness of the encoding detector's speed comparison: its PyTorch twin
(benchmarks/torch_models/encoding_detector.py) computes the same training loss terms, gradients and
Adam step as jvision's model, from the same weights, triplet batch and VAE noise. Compared in
float64 on both sides, with the tolerances (and their reasons) of `helpers.check_twin`.

jvision's default correlation is "fft", the twin's a grouped convolution: the same sums, with
rounding relative to the whole map's norm rather than to each sum; in float64 both are ~1e-15.

The batch's negative crops must hold something (checked): a batch of empty negative crops (as scenes
made of the embedded MNIST set's first digits gave: it is sorted by class, so every scene held only
0s and no window avoided one) makes the first BatchNorm's variance 0, its 1/sqrt(var + eps) 316,
and the encoder's first-layer gradients mostly rounding noise.

Cases: the tiny config (GroupNorm, "fft"); with raw sums (`response_adjust=False`: the adjust
parameters are unused on both sides); with pytlib's BatchNorm; with BatchNorm, the "direct"
correlation and a 24 px exemplar (the decoder's last layer then needs one extra row and column:
torch's output_padding=1 against jvision's padding (2, 3)); the default config (widths 16-128,
latent 32), with GroupNorm and with BatchNorm.
"""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from helpers import check_twin, load_config  # noqa: E402

from jvision import config_overrides  # noqa: E402
from jvision.data import embedded_mnist, mnist_detection  # noqa: E402
from jvision.models.encoding_detector import triplets  # noqa: E402

# Two triplets: every layer, norm and loss term sees more than one example; the full-size cases'
# float64 convolutions took 21 s each at 8.
BATCH = 2
SCENES = 24

BATCH_NORM = {"model.norm": "batch"}
CASES = {
    "tiny": ("tiny", {}),
    "tiny-raw_sums": ("tiny", {"model.response_adjust": False}),
    "tiny-batchnorm": ("tiny", BATCH_NORM),
    "tiny-batchnorm-direct-exemplar24": (
        "tiny",
        {**BATCH_NORM, "model.correlation": "direct", "model.exemplar_size": 24},
    ),
    "default": (None, {}),
    "default-batchnorm": (None, BATCH_NORM),
}


@functools.cache
def _scenes():
    images, labels = embedded_mnist.load_digits()  # Sorted by class: take 20 of each.
    scenes, boxes, classes, _ = mnist_detection.generate_scenes(
        images[::25, ..., 0], labels[::25], SCENES, 0
    )
    return [
        {"image": scene[..., None], "boxes": b, "labels": c}
        for scene, b, c in zip(scenes, boxes, classes, strict=True)
    ]


def make_batch(config, batch_size: int, seed: int = 0) -> dict:
    """Triplets as jvision's pipeline makes them (the family's `train_examples`), uint8 crops
    scaled to [0, 1] floats as `pipeline` does."""
    maker = triplets.Triplets(_scenes(), config.model)
    rng = np.random.default_rng(seed)
    examples = [maker(i % SCENES, rng) for i in range(batch_size)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    for name in ("search_positive", "search_negative", "exemplar"):
        batch[name] = batch[name].astype(np.float32) / 255
    return batch


def perturb_adjust(model, seed: int = 2) -> None:
    """Moves the response gain and bias off their initial values (which the twin shares), and
    fills the exemplar bank (which the twin must ignore)."""
    rng = np.random.default_rng(seed)
    model.response_gain[...] = model.response_gain[...] * 1.3
    model.response_bias[...] = jnp.full_like(model.response_bias[...], -0.2)
    model.bank[...] = jnp.asarray(rng.normal(size=model.bank.shape), model.bank[...].dtype)


def test_batch_shapes():
    config = load_config("encoding_detector_mnist", "tiny")
    batch = make_batch(config, 2)
    assert batch["search_positive"].shape == (2, 46, 46, 1)
    assert batch["search_negative"].shape == (2, 46, 46, 1)
    assert batch["exemplar"].shape == (2, 23, 23, 1)
    assert batch["target_positive"].shape == (2, 12, 12)
    assert set(np.unique(batch["target_positive"])) <= {0.0, 1.0}
    assert batch["target_positive"].any()  # Some cells are positive.
    assert all(crop.any() for crop in batch["search_negative"])  # Real crops, not empty ones.


@pytest.mark.parametrize("case", list(CASES))
def test_twin_matches_jvision(case):
    variant, overrides = CASES[case]
    config = load_config("encoding_detector_mnist", variant)
    config_overrides.apply_overrides(config, overrides)
    summary = check_twin(config, make_batch(config, BATCH), prepare=perturb_adjust)
    print(f"\n{case}: {summary}")
