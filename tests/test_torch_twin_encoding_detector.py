"""Fairness of the encoding detector's speed comparison: its PyTorch twin
(benchmarks/torch_models/encoding_detector.py) computes the same training loss terms, gradients and
Adam step as jvision's model, from the same weights, triplet batch and VAE noise.

Same checks and tolerances as tests/test_torch_twins.py (whose helpers this reuses), for the same
reason: float32 on both sides, different kernels (oneDNN vs XLA) and summation orders.
- loss terms: rtol 1e-4 (abs 1e-6). Measured: at most 1.4e-6 relative (most under 1e-6).
  jvision's default correlation is "fft", the twin's a grouped convolution: the same sums, but
  the FFT's rounding is relative to the whole map's norm, not to each sum; the BCE means over 144
  responses per example still agree to ~1e-6. 1e-4 fails for real differences (measured, both
  norms): loading the VAE's linears without the (h, w, C) -> (C, h, w) permutation moves vae_kl
  by 3e-2 to 0.6 and vae_recon by 1.4e-4 to 1e-2; a response gain and bias left at their initial
  values move bce_negative by 4e-2 to 0.16 and bce_positive by 7e-4 to 4e-2.
- gradients: per tensor, |g_torch - g_jax| <= 1e-3·|g_jax| + 1e-4·max|g_jax of that tensor| +
  1e-5·max|g_jax of the model| (the last term for conv biases before a norm (batch or group
  statistics), whose exact gradient is zero: only rounding noise on both sides).
- parameters and BatchNorm running means after one Adam step from the same gradients:
  1e-5·|p| + 1e-6 + 1e-5·max|p of that tensor| (same arithmetic, different rounding); running
  variances are skipped (torch averages the unbiased batch variance, Flax the biased one).
The next step's loss through `train_step` is checked at rtol 1e-4 too. Measured: gradients within
4e-5 of their tensor's largest with BatchNorm, 7e-6 with GroupNorm (noise around exact zeros
under 1e-7 of the model's largest), parameters after the step within 7.4e-6 of their tensor's
largest, next loss within 3.5e-7.

The batch's negative crops must hold something (checked): a batch of empty negative crops (as scenes
made of the embedded MNIST set's first digits gave: it is sorted by class, so every scene held only
0s and no window avoided one) makes the first BatchNorm's variance 0, its 1/sqrt(var + eps) 316,
and the encoder's first-layer gradients rounding noise (measured against float64: conv biases
whose exact gradient is 0 got up to 15 in torch, 0.75 in jvision).

Cases: the tiny config (GroupNorm, "fft"); with raw sums (`response_adjust=False`: the adjust
parameters are unused on both sides); with pytlib's BatchNorm; with BatchNorm, the "direct"
correlation and a 24 px exemplar (the decoder's last layer then needs one extra row and column:
torch's output_padding=1 against jvision's padding (2, 3)); the default config (widths 16-128,
latent 32), with GroupNorm and with BatchNorm.
"""

import functools
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from conftest import ROOT, load_config  # noqa: E402
from flax import nnx  # noqa: E402
from test_torch_twins import (  # noqa: E402
    LOSS_RTOL,
    assert_grads_close,
    assert_step_matches,
    build_jvision,
    jax_loss_and_grads,
    max_relative,
    perturb,
)

from jvision import config_lib, models, optim  # noqa: E402
from jvision.data import embedded_mnist, mnist_detection, triplets  # noqa: E402

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from benchmarks import torch_models as tm  # noqa: E402

BATCH = 8
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
    """Triplets as jvision's pipeline makes them (`data.train_examples="triplets"`), uint8 crops
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
    model.response_bias[...] = jnp.float32(-0.2)
    model.bank[...] = jnp.asarray(rng.normal(size=model.bank.shape), jnp.float32)


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
    config_lib.apply_overrides(config, overrides)
    family = models.get(config.model.name)
    model = build_jvision(family, config)
    perturb(model)
    perturb_adjust(model)
    twin = tm.build(config)
    tm.load_jvision_weights(twin, nnx.to_pure_dict(nnx.state(model)))
    jax_optimizer = nnx.Optimizer(model, optim.make(config.optimizer), wrt=nnx.Param)
    torch_optimizer = tm.make_optimizer(twin, config)

    batch = make_batch(config, BATCH)
    torch_batch = tm.to_torch_batch(batch)
    key = jax.random.key(config.seed)

    loss_and_grads = jax_loss_and_grads(family, model)
    loss, terms, grads = loss_and_grads(model, batch, key, 0)
    twin_loss, twin_terms = tm.train_loss(twin, torch_batch, tm.jax_noise(config, key, BATCH), 0)
    twin_loss.backward()
    assert set(twin_terms) == set(terms)
    term_diff = {}
    for term, value in terms.items():
        assert twin_terms[term].item() == pytest.approx(value, rel=LOSS_RTOL, abs=1e-6), term
        term_diff[term] = max_relative(twin_terms[term].item(), value)
    if not config.model.response_adjust:  # Unused on both sides: jvision's gradient is zero.
        assert twin.adjust.weight.grad is None
        for parameter in twin.adjust.parameters():
            parameter.grad = torch.zeros_like(parameter)
    grad_diff = assert_grads_close(twin, grads)

    # One Adam step from the same gradients, and the BatchNorm running means it left (three
    # updates per step: exemplar, positive and negative search batches, in jvision's order).
    step_diff = assert_step_matches(twin, model, grads, torch_optimizer, jax_optimizer)

    next_key = jax.random.fold_in(key, 1)
    next_loss, _, _ = loss_and_grads(model, batch, next_key, 1)
    twin_next = tm.train_step(
        twin, torch_optimizer, torch_batch, tm.jax_noise(config, next_key, BATCH), 1
    )
    assert twin_next.item() == pytest.approx(next_loss, rel=LOSS_RTOL)
    print(
        f"\n{case}: loss {loss:.7g} vs {twin_loss.item():.7g}; relative differences "
        + ", ".join(f"{k} {v:.1e}" for k, v in term_diff.items())
        + f"; gradients {grad_diff[0]:.1e} (noise {grad_diff[1]:.1e}); parameters after a step "
        f"{step_diff:.1e}; next loss {max_relative(twin_next.item(), next_loss):.1e}"
    )
