"""PyTorch twins of jvision's models, for side-by-side speed comparisons.

Each twin computes the same function as its jvision family, with the same architecture,
parameterisation, loss reduction and optimizer, in idiomatic PyTorch (NCHW tensors, nn.Conv2d,
nn.BatchNorm2d, hand-written fused-gate LSTM cells), so that a step-time comparison compares
frameworks rather than models. tests/test_torch_twins.py loads the same weights into both and
checks that losses, gradients and an optimizer step agree.

    from benchmarks import torch_models as tm
    config = load_config("vae_mnist")                 # the jvision ConfigDict
    model = tm.build(config)                          # nn.Module, train mode
    optimizer = tm.make_optimizer(model, config)      # jvision.optim.make's equivalent
    batch = tm.to_torch_batch(numpy_batch)            # images [B, H, W, C] -> [B, C, H, W]
    loss = tm.train_step(model, optimizer, batch)     # zero_grad, loss, backward, step
    tm.load_jvision_weights(model, nnx.to_pure_dict(nnx.state(jvision_model)))
    tree = tm.torch_to_jvision(model, model.state_dict(), template)  # And back (jvision.convert).
    noise = tm.jax_noise(config, key, batch_size)     # the noise jvision draws from `key`
    loss, terms = tm.train_loss(model, batch, noise, step)

Randomness (reparameterisation ε, DRAW's per-glimpse ε, PatchVAE's Gaussian and uniform noise,
the transfer head's dropout mask) enters as a dict of tensors, `noise`; with `noise=None` the twin
draws its own with torch (`model.sample_noise(batch_size)`), which is what a benchmark times.
The SSD has no noise. Nothing here sets torch's thread count: the benchmark decides.
"""

from . import draw, encoding_detector, patchvae, ssd, transfer, vae
from ._common import (
    jvision_to_torch,
    load_jvision_weights,
    make_lr_scheduler,
    make_optimizer,
    to_torch_batch,
    torch_to_jvision,
    train_loss,
    train_step,
)

FAMILIES = {
    "vae": vae,
    "draw": draw,
    "ssd": ssd,
    "patchvae": patchvae,
    "transfer": transfer,
    "encoding_detector": encoding_detector,
}
# The configs the twins are written for (any config of these families works).
CONFIGS = {
    "vae_mnist": vae,
    "draw_mnist": draw,
    "draw_mnist_small": draw,
    "ssd_mnist": ssd,
    "patchvae_mnist": patchvae,
    "transfer_mnist": transfer,
    "encoding_detector_mnist": encoding_detector,
}

__all__ = [
    "CONFIGS",
    "FAMILIES",
    "build",
    "family",
    "jax_noise",
    "jvision_to_torch",
    "load_jvision_weights",
    "make_lr_scheduler",
    "make_optimizer",
    "to_torch_batch",
    "torch_to_jvision",
    "train_loss",
    "train_step",
]


def family(config):
    """The twin module of a jvision config's `model.name`."""
    name = config.model.name
    if name not in FAMILIES:
        raise ValueError(f"no PyTorch twin for model.name {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def build(config):
    """The twin of `jvision.models.get(config.model).build(config.model, rngs)`: an
    nn.Module in train mode, randomly initialised by torch (load jvision's weights to compare)."""
    return family(config).build(config)


def jax_noise(config, key, batch_size: int):
    """The noise jvision's `train_loss(model, batch, key, step)` draws from `key` for a batch of
    `batch_size`, as the twin's `noise` dict of torch tensors (None for the SSD). Imports jax."""
    return family(config).jax_noise(config, key, batch_size)
