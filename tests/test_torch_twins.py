"""Fairness of the speed comparison: each PyTorch twin (benchmarks/torch_models) computes the same
training loss, gradients and optimizer step as its jvision model, from the same weights, batch and
noise.

Tolerances (float32 throughout):
- losses: rtol 1e-4. Both sides sum thousands of float32 terms (784 pixels × batch, 42k SSD prior
  losses) in different orders, through different convolution and matmul kernels (oneDNN vs XLA);
  that moves the result by up to ~5e-6 relative (measured: 0 to 4.5e-7). 1e-4 leaves a wide
  margin for that and still fails for real differences: loading weights without the layout
  permutations moves the loss by 2.7e-4 (DRAW's read features) to 8.8e-3 (the VAE's pixel
  shuffle), and the gradient check below catches those by orders of magnitude more.
- gradients: per tensor, |g_torch - g_jax| <= 1e-3·|g_jax| + 1e-4·max|g_jax of that tensor|
  + 1e-5·max|g_jax of the model|. The last term covers gradients that are exactly zero in exact
  arithmetic and only rounding noise in both frameworks: a conv bias right before a training-mode
  BatchNorm gets a sum of ~10⁴ terms that cancel (the SSD's first conv: |g| ~ 2e-6 against a
  largest gradient of 0.35).
- one optimizer step from the same gradients: parameters and BatchNorm running means within
  1e-5·|p| + 1e-6 + 1e-5·max|p of that tensor| (the update is the same arithmetic; only rounding
  differs, and running means average large activations: at initialisation PatchVAE's appearance
  samples have σ up to ~300, so its decoder's inputs are in the hundreds).
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

from jvision import config_lib, models, optim  # noqa: E402
from jvision.data import embedded_mnist, mnist_detection  # noqa: E402

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from benchmarks import torch_models as tm  # noqa: E402

BATCH = 8
LOSS_RTOL = 1e-4

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


def perturb(model, seed: int = 1) -> None:
    """Moves biases, BatchNorm scales and statistics off their initial 0s and 1s, so that the
    weight converter's handling of each is tested."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)

    def visit(node):
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value)
            elif key in ("bias", "mean"):
                node[key] = value + rng.normal(0, 0.05, value.shape).astype(np.float32)
            elif key in ("scale", "var"):
                node[key] = value * rng.uniform(0.7, 1.3, value.shape).astype(np.float32)

    visit(pure)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def build_jvision(family, config):
    """`family.build(config.model, nnx.Rngs(0))`, initialised in one jitted program (eagerly,
    each initializer compiles on its own: seconds per model)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: family.build(config.model, nnx.Rngs(0))))
    state = jax.jit(lambda: nnx.state(family.build(config.model, nnx.Rngs(0))))()
    return nnx.merge(graphdef, state)


def trainable_filter(family, model):
    return family.trainable(model) if hasattr(family, "trainable") else nnx.Param


def jax_loss_and_grads(family, model):
    """A jitted `(model, batch, key, step) -> (loss, terms, grads)` of the family's train loss,
    differentiated with respect to the parameters jvision's trainer optimizes."""
    wrt = nnx.DiffState(0, trainable_filter(family, model))
    grad_fn = nnx.jit(nnx.value_and_grad(family.train_loss, argnums=wrt, has_aux=True))

    def run(model, batch, key, step):
        (loss, terms), grads = grad_fn(model, batch, key, jnp.int32(step))
        return float(loss), {k: float(v) for k, v in terms.items()}, grads

    return run


def torch_tree(model, tree, what):
    """jvision tree -> torch names and tensors; `what` picks parameters or buffers."""
    converted = tm.jvision_to_torch(model, tree, partial=True)
    names = dict(model.named_parameters()) if what == "params" else dict(model.named_buffers())
    return {name: converted[name] for name in names if name in converted}


def max_relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def assert_grads_close(twin, jax_grads) -> tuple[float, float]:
    """Checks the twin's gradients against jvision's (tolerances in the module docstring).

    Returns the largest difference relative to its tensor's largest gradient, over tensors whose
    gradients matter (largest value ≥ 1e-3 of the model's), and the largest difference relative to
    the model's largest gradient over the rest (rounding noise around exact zeros).
    """
    expected = torch_tree(twin, nnx.to_pure_dict(jax_grads), "params")
    got = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    assert set(got) == set(expected), set(got) ^ set(expected)
    model_scale = max(float(g.abs().max()) for g in expected.values())
    meaningful, noise = 0.0, 0.0
    for name, want in expected.items():
        scale = float(want.abs().max())
        diff = (got[name] - want).abs()
        bound = 1e-3 * want.abs() + 1e-4 * scale + 1e-5 * model_scale
        assert bool((diff <= bound).all()), (name, float(diff.max()), scale, model_scale)
        if scale >= 1e-3 * model_scale:
            meaningful = max(meaningful, float(diff.max()) / scale)
        else:
            noise = max(noise, float(diff.max()) / model_scale)
    return meaningful, noise


def assert_step_matches(twin, model, grads, torch_optimizer, jax_optimizer) -> float:
    """Takes one optimizer step in both frameworks from jvision's gradients `grads`, then checks
    the parameters and BatchNorm running means they leave. Returns the largest difference
    relative to its tensor's largest value."""
    torch_grads = torch_tree(twin, nnx.to_pure_dict(grads), "params")
    for parameter_name, parameter in twin.named_parameters():
        if parameter_name in torch_grads:
            parameter.grad = torch_grads[parameter_name].clone()
    torch_optimizer.step()
    nnx.jit(lambda optimizer, model, grads: optimizer.update(model, grads))(
        jax_optimizer, model, grads
    )
    state = nnx.to_pure_dict(nnx.state(model))
    tensors = dict(twin.named_parameters(), **dict(twin.named_buffers()))
    expected = {**torch_tree(twin, state, "params"), **torch_tree(twin, state, "buffers")}
    step_diff = 0.0
    for tensor_name, want in expected.items():
        if tensor_name.endswith("running_var"):
            continue  # Torch averages the unbiased batch variance, Flax the biased one.
        scale = float(want.abs().max())
        got = tensors[tensor_name].detach()
        torch.testing.assert_close(
            got,
            want,
            rtol=1e-5,
            atol=1e-6 + 1e-5 * scale,
            msg=lambda m, n=tensor_name: f"{n}: {m}",
        )
        step_diff = max(step_diff, float((got - want).abs().max()) / max(scale, 1e-6))
    return step_diff


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_twin_matches_jvision(case):
    name, variant, overrides, step = case
    config = load_config(name, variant)
    config_lib.apply_overrides(config, overrides)
    family = models.get(config.model.name)
    model = build_jvision(family, config)
    perturb(model)
    twin = tm.build(config)
    tm.load_jvision_weights(twin, nnx.to_pure_dict(nnx.state(model)))
    jax_optimizer = nnx.Optimizer(
        model, optim.make(config.optimizer), wrt=trainable_filter(family, model)
    )
    torch_optimizer = tm.make_optimizer(twin, config)

    batch = make_batch(config, BATCH)
    torch_batch = tm.to_torch_batch(batch)
    key = jax.random.fold_in(jax.random.key(config.seed), step)

    # The loss and its gradients at the same weights, batch and noise.
    loss_and_grads = jax_loss_and_grads(family, model)
    loss, terms, grads = loss_and_grads(model, batch, key, step)
    twin_loss, twin_terms = tm.train_loss(twin, torch_batch, tm.jax_noise(config, key, BATCH), step)
    twin_loss.backward()
    for term, value in terms.items():
        if term in twin_terms:
            assert twin_terms[term].item() == pytest.approx(value, rel=LOSS_RTOL, abs=1e-6), term
    assert twin_loss.item() == pytest.approx(loss, rel=LOSS_RTOL)
    grad_diff = assert_grads_close(twin, grads)

    # One optimizer step from the same gradients, and the BatchNorm running means it left.
    step_diff = assert_step_matches(twin, model, grads, torch_optimizer, jax_optimizer)

    # The next step through `train_step`: its loss is that of the weights after the step above.
    next_key = jax.random.fold_in(key, 1)
    next_loss, _, _ = loss_and_grads(model, batch, next_key, step + 1)
    twin_next = tm.train_step(
        twin, torch_optimizer, torch_batch, tm.jax_noise(config, next_key, BATCH), step + 1
    )
    assert twin_next.item() == pytest.approx(next_loss, rel=LOSS_RTOL)
    print(
        f"\n{_case_id(case)}: loss {loss:.7g} vs {twin_loss.item():.7g} "
        f"(relative {max_relative(twin_loss.item(), loss):.1e}); gradients {grad_diff[0]:.1e} "
        f"(noise {grad_diff[1]:.1e}); parameters after a step {step_diff:.1e}; "
        f"next loss {max_relative(twin_next.item(), next_loss):.1e}"
    )
