"""Model families: the one contract between a model and the rest of jvision.

A family is a module `jvision/models/<name>.py`; a config selects it with `model.name = "<name>"`.
`get(name)` reads the module into a `Family`: the functions below, the optional ones filled with
their defaults. Nothing else in jvision looks inside a family module.

Shapes: `B` is the batch; `batch` is a dict of arrays from `jvision.data.pipeline` (`image`
[B, H, W, C] float32 in [0, 1], plus the dataset's fields, e.g. `label` [B], `boxes` [B, M, 4]);
`key` is a PRNG key derived from `(seed, step)`; `step` is an int32 scalar, the number of train
steps taken (0 first), so schedules are functions of it rather than stored state. Functions that
take a model and a batch run inside `jax.jit`; evaluations and `predict` see the model in eval mode
(`eval_model`). `build` only constructs: it reads no files.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jvision.errors import UserError

if TYPE_CHECKING:  # Flax is imported by the families: listing them (`known`) stays light.
    from flax import nnx

Batch = dict[str, Any]
ExampleMaker = Callable[[int, Any], dict]  # (index, numpy Generator) -> one example (NumPy).


def _as_drawn(outputs: dict) -> dict:
    return outputs


def _all_parameters(model: nnx.Module):
    from flax import nnx

    del model
    return nnx.Param


@dataclasses.dataclass(frozen=True)
class Calibration:
    """State computed from data rather than trained (e.g. a class exemplar bank): before every
    evaluation and before the checkpoint that evaluation results refer to, the statistics are
    summed over the examples `examples` makes from the training split and `apply` writes them
    into the model's variables (of a type the optimizer does not train)."""

    # (source, model config) -> ExampleMaker: the examples of one stored training example.
    examples: Callable[[Any, Any], ExampleMaker]
    # (model, batch, step) -> {name: [B, ...]} per-example statistics (summed by the caller).
    statistics: Callable[[nnx.Module, Batch, Any], dict]
    # (model, {name: sums}) -> None: sets the model's calibrated variables in place.
    apply: Callable[[nnx.Module, dict], None]


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family provides. Required: `build`, `train_loss`, `predict`,
    `image_summaries`. A module leaves out an optional one to take its default."""

    name: str
    # (model config, nnx.Rngs) -> nnx.Module.
    build: Callable[[Any, nnx.Rngs], nnx.Module]
    # (model, batch, key, step) -> (loss scalar, {term: scalar}): what the optimizer minimises.
    train_loss: Callable[..., tuple[Any, dict]]
    # (model, batch, step) -> {name: [B, ...]}: what the model says about each image (the table
    # in docs/outputs.md).
    predict: Callable[[nnx.Module, Batch, Any], dict]
    # (model, batch, key, step) -> {name: arrays}: the numbers behind the family's pictures.
    image_summaries: Callable[..., dict]
    # (model, batch, key, step) -> {metric: [B]} per-example values, averaged by the
    # `mean_metrics` evaluator; None: the family has none.
    eval_metrics: Callable[..., dict] | None = None
    # (model, batch, key, step, num_samples) -> [B, num_samples] log importance weights
    # log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x): for the `importance_sampled_nll` evaluator.
    log_importance_weights: Callable[..., Any] | None = None
    # (NumPy outputs of image_summaries) -> {name: [rows, columns, H, W, C] floats in [0, 1]},
    # drawn on the host; default: the outputs are grids already.
    draw_summaries: Callable[[dict], dict] = _as_drawn
    # (model) -> nnx filter of the parameters the optimizer updates; default: every nnx.Param.
    trainable: Callable[[nnx.Module], Any] = _all_parameters
    # (source, model config) -> ExampleMaker: training examples made from the stored ones (e.g.
    # triplets from detection scenes); None: train on the stored examples.
    train_examples: Callable[[Any, Any], ExampleMaker] | None = None
    # State computed from data after training; None: none.
    calibration: Calibration | None = None


REQUIRED = tuple(f.name for f in dataclasses.fields(Family) if f.default is dataclasses.MISSING)


def known() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def check_name(name: str) -> None:
    """`UserError` unless `name` is a family's."""
    if name not in known():
        raise UserError(f"unknown model.name {name!r}; known models: {', '.join(known())}")


def get(name: str) -> Family:
    """The family `jvision.models.<name>`, its optional functions resolved to their defaults."""
    check_name(name)
    module = importlib.import_module(f"{__name__}.{name}")
    declared = {
        field.name: getattr(module, field.name)
        for field in dataclasses.fields(Family)
        if field.name != "name" and field.name in vars(module)
    }
    missing = [field for field in REQUIRED if field != "name" and field not in declared]
    if missing:
        raise TypeError(f"model family {name} lacks {', '.join(missing)}")
    declared["build"] = _with_dtype_policy(declared["build"])
    return Family(name=name, **declared)


def _with_dtype_policy(build):
    """The family's `build`, then `config.model.dtype` applied to its layers
    (`jvision.ops.precision`)."""

    def build_with_policy(model_config, rngs):
        from jvision.ops import precision

        return precision.apply_policy(
            build(model_config, rngs), model_config.get("dtype", "float32")
        )

    return build_with_policy


def bind(examples: Callable[[Any, Any], ExampleMaker] | None, model_config):
    """A family's `(source, model config) -> ExampleMaker` with the model config given, as the
    data pipeline takes it (`source -> ExampleMaker`); None stays None."""
    if examples is None:
        return None
    return lambda source: examples(source, model_config)


def eval_model(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.Module:
    """The model of `state` in eval mode (BatchNorm statistics, no dropout)."""
    from flax import nnx

    model = nnx.merge(graphdef, state)
    model.eval()
    return model
