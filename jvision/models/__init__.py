"""Model families: the one contract between a model and the rest of jvision.

A family is a module (or package) `jvision.models.<name>`; a config selects it with
`model.name = "<name>"`. `Contract` declares what it provides: every function takes the model
config first (hyperparameters are read from it, not stored on modules), and `get(model_config)`
reads the module into a `Family` whose functions have that config bound, the optional ones filled
with their defaults. `problems(module)` says what a module lacks or declares with another shape
(`get` refuses such a module; `tests/test_models.py` checks every family). Nothing else in
jvision looks inside a family module.

Shapes: `B` is the batch; `batch` is a dict of arrays from `jvision.data.pipeline` (`image`
[B, H, W, C] float32 in [0, 1], plus the dataset's fields, e.g. `label` [B], `boxes` [B, M, 4]);
`key` is a PRNG key derived from `(seed, step)`; `step` is an int32 scalar, the number of train
steps taken (0 first), so schedules are functions of it rather than stored state. Functions that
take a model and a batch run inside `jax.jit`; evaluations and `predict` see the model in eval mode
(`eval_model`). `build` only constructs: it reads no files.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from jvision.errors import UserError

if TYPE_CHECKING:  # Flax is imported by the families: listing them (`known`) stays light.
    import ml_collections
    from flax import nnx

Batch = dict[str, Any]
ExampleMaker = Callable[[int, Any], dict]  # (index, numpy Generator) -> one example (NumPy).


class Contract(Protocol):
    """What a family module defines: these functions, with these parameters (names and order).
    `OPTIONAL` lists those a module may leave out, and what leaving one out means."""

    def build(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        """The model, constructed (no files read)."""

    def train_loss(self, config, model, batch: Batch, key, step) -> tuple[Any, dict]:
        """`(loss scalar, {term: scalar})`: what the optimizer minimises, and the terms logged
        beside it as `train/<term>` (the loss itself is logged as `train/loss`: not a term)."""

    def predict(self, config, model, batch: Batch, step) -> dict:
        """`{name: [B, ...]}`: what the model says about each image (docs/outputs.md)."""

    def image_summaries(self, config, model, batch: Batch, key, step) -> dict:
        """`{name: arrays}`: the numbers behind the family's pictures (computed inside jit)."""

    def draw_summaries(self, config, outputs: dict) -> dict:
        """NumPy outputs of `image_summaries` -> `{name: [rows, columns, H, W, C] floats in
        [0, 1]}`, drawn on the host (`jvision.summaries`)."""

    def eval_metrics(self, config, model, batch: Batch, key, step) -> dict:
        """`{metric: [B]}` per-example values, averaged by the `mean_metrics` metric."""

    def log_importance_weights(self, config, model, batch: Batch, key, step, num_samples):
        """[B, num_samples] log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x): for the
        `importance_sampled_nll` metric."""

    def trainable(self, config, model):
        """The nnx filter of the parameters the optimizer updates."""

    def train_examples(self, config, source) -> ExampleMaker:
        """The maker of training examples from a random-access source of stored ones (e.g.
        triplets from detection scenes)."""

    calibration: Calibration


OPTIONAL = {
    "eval_metrics": "no per-example metrics (the mean_metrics metric refuses the family)",
    "log_importance_weights": "no likelihood (the importance_sampled_nll metric refuses it)",
    "trainable": "every nnx.Param is trained",
    "train_examples": "the stored examples are the training examples",
    "calibration": "no state computed from data",
}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """State computed from data rather than trained (e.g. a class exemplar bank): before every
    evaluation and before the checkpoint that evaluation results refer to, the statistics are
    summed over the examples `examples` makes from the training split and `apply` writes them
    into the model's variables (of a type the optimizer does not train). Each function takes the
    model config first, as the contract's."""

    # (model config, source) -> ExampleMaker: the examples of one stored training example.
    examples: Callable[..., ExampleMaker]
    # (model config, model, batch, step) -> {name: [B, ...]} per-example statistics (summed by
    # the caller).
    statistics: Callable[..., dict]
    # (model config, model, {name: sums}) -> None: sets the model's calibrated variables.
    apply: Callable[..., None]


def _declared() -> dict[str, list[str]]:
    """The contract's functions and their parameters (without the Protocol's `self`)."""
    return {
        name: list(inspect.signature(member).parameters)[1:]
        for name, member in vars(Contract).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def problems(module) -> list[str]:
    """What a family module lacks, or declares with other parameters than `Contract`'s: one
    line each; empty when it meets the contract."""
    found = []
    for name, parameters in _declared().items():
        function = getattr(module, name, None)
        if function is None:
            if name not in OPTIONAL:
                found.append(f"{name} is missing: define {name}({', '.join(parameters)})")
            continue
        given = list(inspect.signature(function).parameters)
        if given != parameters:
            found.append(f"{name}({', '.join(given)}) should be {name}({', '.join(parameters)})")
    calibration = getattr(module, "calibration", None)
    if calibration is not None and not isinstance(calibration, Calibration):
        found.append("calibration should be a jvision.models.Calibration")
    return found


@dataclasses.dataclass(frozen=True)
class Family:
    """A family's functions with its model config bound: each takes `Contract`'s parameters but
    the first (`build(rngs)`, `train_loss(model, batch, key, step)`, ...); the optional ones a
    module leaves out are None (`trainable`: every parameter)."""

    name: str
    build: Callable
    train_loss: Callable
    predict: Callable
    image_summaries: Callable
    draw_summaries: Callable
    eval_metrics: Callable | None = None
    log_importance_weights: Callable | None = None
    trainable: Callable = None
    train_examples: Callable | None = None
    # (source) -> ExampleMaker, (model, batch, step) -> statistics, (model, totals) -> None.
    calibration: Calibration | None = None


def known() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def check_name(name: str) -> None:
    """`UserError` unless `name` is a family's."""
    if name not in known():
        raise UserError(f"unknown model.name {name!r}; known models: {', '.join(known())}")


def module(name: str):
    """The family module `jvision.models.<name>`; `TypeError` naming what breaks the contract."""
    check_name(name)
    family = importlib.import_module(f"{__name__}.{name}")
    found = problems(family)
    if found:
        raise TypeError(f"model family {name} breaks the contract: {'; '.join(found)}")
    return family


def get(config: ml_collections.ConfigDict) -> Family:
    """The family `config.name` names, its functions with `config` (the model config) bound."""
    family = module(config.name)

    def bound(name: str):
        function = getattr(family, name, None)
        return None if function is None else functools.partial(function, config)

    calibration = getattr(family, "calibration", None)
    if calibration is not None:
        calibration = Calibration(
            *(functools.partial(f, config) for f in dataclasses.astuple(calibration))
        )
    return Family(
        name=config.name,
        build=_with_dtype_policy(family.build, config),
        train_loss=bound("train_loss"),
        predict=bound("predict"),
        image_summaries=bound("image_summaries"),
        draw_summaries=bound("draw_summaries"),
        eval_metrics=bound("eval_metrics"),
        log_importance_weights=bound("log_importance_weights"),
        trainable=bound("trainable") or _every_parameter,
        train_examples=bound("train_examples"),
        calibration=calibration,
    )


def _every_parameter(model: nnx.Module):
    from flax import nnx  # Here: importing this package stays light (see above).

    del model
    return nnx.Param


def _with_dtype_policy(build: Callable, config: ml_collections.ConfigDict) -> Callable:
    """`build(config, rngs)` as `build(rngs)`, then `config.dtype` applied to the model's layers
    (`jvision.ops.precision`)."""

    def build_with_policy(rngs: nnx.Rngs) -> nnx.Module:
        from jvision.ops import precision  # Here: importing this package stays light.

        return precision.apply_policy(build(config, rngs), config.get("dtype", "float32"))

    return build_with_policy


def eval_model(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.Module:
    """The model of `state` in eval mode (BatchNorm statistics, no dropout)."""
    from flax import nnx  # Here: importing this package stays light.

    model = nnx.merge(graphdef, state)
    model.eval()
    return model
