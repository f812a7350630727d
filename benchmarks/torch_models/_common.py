"""What every PyTorch twin shares: layers with jvision's conventions, the likelihood and KL terms,
the weight converters between jvision's NNX variables and torch's state_dict (both ways), the
optimizer and the train step."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- Layers ------------------------------------------------------------------------------------


def batch_norm(channels: int, flax_momentum: float = 0.99, epsilon: float = 1e-5):
    """nn.BatchNorm2d equivalent to `nnx.BatchNorm(channels, momentum, epsilon)`.

    Flax's momentum is the weight of the old running statistic, torch's that of the new batch
    statistic. Training-mode outputs are the same function (biased batch variance); only the
    running variance differs: torch averages the unbiased batch variance (×n/(n-1)), Flax the
    biased one.
    """
    return nn.BatchNorm2d(channels, eps=epsilon, momentum=1.0 - flax_momentum)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding of one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with jvision's `padding='SAME'` (`nnx.Conv` default): symmetric padding at stride
    1, but a strided conv pads only after an even-sized input (torch's padding=k//2 would also pad
    before, shifting every output by one pixel)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True):
        super().__init__(
            cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            (k_h, k_w), (s_h, s_w) = self.kernel_size, self.stride
            top, bottom = same_padding(x.shape[-2], k_h, s_h)
            left, right = same_padding(x.shape[-1], k_w, s_w)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def flat_permutation(shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """Indices `p` with torch_flat[k] = jax_flat[p[k]], where jax flattens an array of `shape` and
    torch flattens the same array transposed by `axes` (e.g. (H, W, C) -> (C, H, W): (2, 0, 1))."""
    return np.arange(math.prod(shape)).reshape(shape).transpose(axes).ravel()


def replace(tree: dict, dotted: str, fn) -> dict:
    """A copy of `tree` (nested dicts) whose node at `dotted` ("decoder.0.conv") is `fn(node)`;
    a missing node stays missing (gradient trees lack BatchNorm statistics, frozen layers)."""
    key, _, rest = dotted.partition(".")
    key = int(key) if key.isdigit() else key
    if key not in tree:
        return tree
    return {**tree, key: replace(tree[key], rest, fn) if rest else fn(tree[key])}


def permute(node: dict, rows=None, columns=None) -> dict:
    """A dense or conv layer's variables with its kernel's input `rows` and output `columns`
    (and bias) taken in the given orders."""
    out = {}
    for name, value in node.items():
        value = np.asarray(value)
        if columns is not None:
            value = value[..., columns]
        if rows is not None and name == "kernel":
            value = value[..., rows, :]
        out[name] = value
    return out


# --- Likelihoods and KL terms (jvision.ops.distributions), per example, in nats ----------------


def sum_per_example(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(-1)


def bernoulli_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return sum_per_example(F.softplus(logits) - targets * logits)


def gaussian_kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return sum_per_example(0.5 * (torch.exp(logvar) + mean.square() - 1.0 - logvar))


# --- Weights from and to jvision ---------------------------------------------------------------


def _node(tree, dotted: str):
    for part in dotted.split(".") if dotted else ():
        key = int(part) if part.isdigit() else part
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _array(value) -> torch.Tensor:
    """A float tensor of `value`: float64 stays float64 (the fairness tests compare in float64),
    anything else becomes float32."""
    value = np.asarray(value)
    return torch.from_numpy(
        np.array(value, np.float64 if value.dtype == np.float64 else np.float32)
    )


def _module_tensors(module: nn.Module, node: dict) -> dict[str, torch.Tensor]:
    """A layer's torch tensors from its jvision variables (kernels HWIO / (in, out))."""
    out = {}
    if isinstance(module, nn.BatchNorm2d):
        names = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
        return {names[k]: _array(v) for k, v in node.items()}
    if "kernel" in node:
        kernel = np.asarray(node["kernel"])
        if isinstance(module, nn.ConvTranspose2d):
            # Flax's ConvTranspose (transpose_kernel=False) slides the kernel unflipped over the
            # dilated input; torch's is the gradient of a conv, i.e. the flipped kernel.
            kernel = kernel[::-1, ::-1].transpose(2, 3, 0, 1)  # -> [in, out, kh, kw]
        elif isinstance(module, nn.Conv2d):
            kernel = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif isinstance(module, nn.Linear):
            kernel = kernel.T
        out["weight"] = _array(kernel)
    if "bias" in node:
        out["bias"] = _array(node["bias"])
    return out


LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)


def jvision_to_torch(model: nn.Module, tree: dict, partial: bool = False) -> dict:
    """jvision variables -> {torch state_dict name: tensor}.

    `tree` is `nnx.to_pure_dict(nnx.state(jvision_model))` (or a tree of the same structure, e.g.
    gradients, with `partial=True`). Torch modules are named as jvision's, so each layer finds its
    variables at its own dotted name; a family's `jvision_layout(tree)` first permutes what the
    layouts order differently (flattened NHWC features, pixel-shuffle channels). Raises on a jvision
    variable left unused or, unless `partial`, a torch tensor left unset.
    """
    tree = model.jvision_layout(tree) if hasattr(model, "jvision_layout") else tree
    state, used = {}, set()
    for name, module in model.named_modules():
        if not isinstance(module, LAYERS):
            continue
        node = _node(tree, name)
        if node is None:
            continue
        for key, value in _module_tensors(module, node).items():
            state[f"{name}.{key}" if name else key] = value
        used.add(name)
    for name, _ in model.named_buffers(recurse=False):  # E.g. the SSD's priors.
        if _node(tree, name) is not None:
            state[name] = _array(_node(tree, name))
            used.add(name)

    def leaves(node, prefix):
        if isinstance(node, dict):
            for key, child in node.items():
                yield from leaves(child, f"{prefix}{key}.")
        else:
            yield prefix[:-1]

    unused = [p for p in leaves(tree, "") if not any(p.startswith(u + ".") or p == u for u in used)]
    if unused:
        raise KeyError(f"jvision variables without a torch counterpart: {unused}")
    current = model.state_dict()
    expected = {k for k in current if not k.endswith("num_batches_tracked")}
    if not partial and expected - set(state):
        raise KeyError(f"torch tensors not set from jvision: {sorted(expected - set(state))}")
    for name, value in state.items():
        if current[name].shape != value.shape:
            raise ValueError(f"{name}: torch {current[name].shape}, jvision {value.shape}")
    return state


def load_jvision_weights(model: nn.Module, tree: dict) -> nn.Module:
    """Copies jvision's parameters and BatchNorm statistics into the twin `model` (in place)."""
    model.load_state_dict(jvision_to_torch(model, tree), strict=False)
    return model


def _numbered(template: dict, start: int = 0) -> tuple[dict, int]:
    """`template` (nested dicts) with each leaf replaced by the float64 numbers start, start+1, …
    in its shape (leaves in order), and the next number."""
    out = {}
    for key, value in template.items():
        if isinstance(value, dict):
            out[key], start = _numbered(value, start)
        else:
            size = math.prod(value.shape)
            out[key] = np.arange(start, start + size, dtype=np.float64).reshape(value.shape)
            start += size
    return out, start


def torch_to_jvision(model: nn.Module, state: dict, template: dict) -> dict:
    """{torch state_dict name: tensor} -> jvision variables: the inverse of `jvision_to_torch`.

    `template` has the structure of the jvision variables, `nnx.to_pure_dict(nnx.state(model))`,
    its leaves anything with a `shape` and `dtype` (arrays, or the abstract arrays of
    `nnx.eval_shape`); the result is that nested dict of NumPy arrays of those dtypes.

    The inverse is derived from the forward mapping, not written a second time: every element of
    `template` is numbered (float64, exact below 2⁵³), the numbers go through `jvision_to_torch`
    (which only moves elements: it renames, permutes, transposes, flips), and each element of a
    torch tensor then names the jvision element it comes from. So a family's `jvision_layout` is
    inverted too, and jvision -> torch -> jvision gives back the same bits. Raises on a tensor of
    the twin missing from `state` (`num_batches_tracked` excepted: jvision keeps none), a tensor
    of `state` the twin does not have, a shape other than the twin's, or a forward mapping that
    does not give every jvision element exactly once.
    """
    numbers, total = _numbered(template)
    sources = jvision_to_torch(model, numbers)
    unknown = sorted(
        name for name in state if name not in sources and not name.endswith("num_batches_tracked")
    )
    if unknown:
        raise KeyError(f"torch tensors without a jvision counterpart: {unknown}")
    values, counts = np.empty(total, np.float64), np.zeros(total, np.int64)
    for name, source in sources.items():
        if name not in state:
            raise KeyError(f"{name} is missing from the torch state_dict")
        tensor = state[name]
        if tuple(tensor.shape) != tuple(source.shape):
            raise ValueError(f"{name}: torch {tuple(tensor.shape)}, twin {tuple(source.shape)}")
        index = source.numpy().astype(np.int64).ravel()
        values[index] = tensor.detach().to("cpu", torch.float64).numpy().ravel()
        counts += np.bincount(index, minlength=total)
    if (counts != 1).any():
        raise ValueError(f"{model.__class__.__name__}'s layout is not one-to-one with jvision's")

    def fill(node: dict, like: dict) -> dict:
        return {
            key: fill(value, like[key])
            if isinstance(value, dict)
            else values[value.astype(np.int64)].astype(like[key].dtype)
            for key, value in node.items()
        }

    return fill(numbers, template)


# --- Optimizer and train step (jvision.optim) -------------------------------------------------


def make_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    """jvision.optim.make(config.optimizer, config.total_steps) for the twin's trainable parameters.

    Coupled weight decay is torch's own `weight_decay`; Adam's eps is optax.scale_by_adam's 1e-8
    (eps_root 0); SGD's momentum buffer starts at the first gradient as optax.trace's. A
    `bias_lr_multiplier` puts every parameter named `bias` (conv, dense and BatchNorm offsets, as
    jvision's mask) in a group of its own at that multiple of the rate.
    """
    opt = config.optimizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    multiplier = opt.get("bias_lr_multiplier", 1.0)
    if multiplier != 1.0:
        groups = [
            {"params": [p for n, p in named if n.split(".")[-1] != "bias"]},
            {
                "params": [p for n, p in named if n.split(".")[-1] == "bias"],
                "lr": opt.learning_rate * multiplier,
            },
        ]
    else:
        groups = [{"params": [p for _, p in named]}]
    if opt.name == "adam":
        return torch.optim.Adam(
            groups,
            lr=opt.learning_rate,
            betas=(opt.b1, opt.b2),
            eps=1e-8,
            weight_decay=opt.weight_decay,
        )
    if opt.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=opt.learning_rate,
            momentum=opt.get("momentum", 0.0),
            weight_decay=opt.weight_decay,
        )
    raise ValueError(f"unknown optimizer.name {opt.name!r}")


def make_lr_scheduler(optimizer: torch.optim.Optimizer, config):
    """jvision's piecewise-constant rate: call `.step()` after each train step (the rate of step
    s, 0-based, is scaled by `decay_factor` once for every boundary <= s, as optax's)."""
    opt = config.optimizer
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [int(s) for s in opt.decay_steps], gamma=opt.decay_factor
    )


def train_loss(model: nn.Module, batch: dict, noise=None, step: int = 0):
    """The family's training loss of a torch batch: `(loss, {term: scalar})`, jvision's
    `train_loss` reduction. `noise=None` draws the randomness with torch."""
    return model.loss(batch, noise, step)


def train_step(model, optimizer, batch: dict, noise=None, step: int = 0) -> torch.Tensor:
    """One training step: zero_grad, loss, backward, optimizer step. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss, _ = model.loss(batch, noise, step)
    loss.backward()
    optimizer.step()
    return loss.detach()


def to_torch_batch(batch: dict) -> dict:
    """A jvision batch (NumPy or JAX arrays, images [B, H, W, C]) -> torch tensors, images NCHW;
    integers as int64, floats in their own precision (float32, or float64)."""
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if name == "image":
            value = value.transpose(0, 3, 1, 2)
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        out[name] = tensor.long() if value.dtype.kind in "iu" else tensor
    return out
