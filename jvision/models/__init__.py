"""Model families. One file per family; the trainer finds it by `config.model.name`.

A family module defines:

    build(model_config, rngs) -> nnx.Module
    train_loss(model, batch, key, step) -> (loss, {metric_name: scalar})
    predict(model, batch, step) -> {name: [B, ...]} what the model says about each image
    image_summaries(model, batch, key, step) -> {name: arrays}

and optionally:

    eval_metrics(model, batch, key, step) -> {metric_name: [B] per-example values}
        (for the `mean_metrics` evaluator)
    draw_summaries(outputs) -> {name: [rows, columns, H, W, C] floats in [0, 1]}
    trainable(model) -> nnx filter of the parameters the optimizer updates (default: nnx.Param)
    calibration_statistics(model, batch, step) -> {name: [B, ...]} and
    set_calibration(model, totals) -> None
        state computed from data after training (`config.calibration`, `jvision.calibration`)

`batch` is a dict of arrays from `jvision.data.pipeline`; `key` is a PRNG key derived from
`(seed, step)` so runs are reproducible; `step` (an int32 scalar: the number of train steps taken,
0 first) drives schedules, e.g. a temperature, as a function of the step rather than stored state.
`build` only constructs: it reads no files. `train_loss`, `eval_metrics`, `predict` and
`image_summaries` run inside `jax.jit`; `image_summaries` returns numbers (images, boxes, scores)
and `draw_summaries`, run on the host with NumPy, turns them into picture grids (without it the
outputs must already be grids). `predict` and the evaluations see the model in eval mode
(`eval_model`). The trainer never names a family: add a file here and a config that selects it.
"""

import importlib
import pkgutil
from types import ModuleType

from flax import nnx

from jvision.errors import UserError

REQUIRED = ("build", "train_loss", "predict", "image_summaries")


def known() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
    """The family module `jvision.models.<name>`."""
    if name not in known():
        raise UserError(f"unknown model.name {name!r}; known models: {', '.join(known())}")
    family = importlib.import_module(f"{__name__}.{name}")
    missing = [fn for fn in REQUIRED if not hasattr(family, fn)]
    if missing:
        raise TypeError(f"model family {name} lacks {', '.join(missing)}")
    return family


def eval_model(graphdef: nnx.GraphDef, state: nnx.State) -> nnx.Module:
    """The model of `state` in eval mode (BatchNorm statistics, no dropout)."""
    model = nnx.merge(graphdef, state)
    model.eval()
    return model
