"""Model families. One file per family; the trainer finds it by `config.model.name`.

A family module defines:

    build(model_config, rngs) -> nnx.Module
    train_loss(model, batch, key, step) -> (loss, {metric_name: scalar})
    eval_metrics(model, batch, key) -> {metric_name: [B] per-example values}
    image_summaries(model, batch, key) -> {name: [N, H, W, C] images in [0, 1]}

`batch` is a dict of arrays from `jvision.data.pipeline`; `key` is a PRNG key derived from
`(seed, step)` so runs are reproducible; `step` (an int32 scalar, 0 first) drives schedules inside
a model, e.g. a temperature. Families used with the `detection_map` evaluator also define
`predict(model, batch)`; a family that trains only some parameters defines
`trainable(model) -> nnx filter` (default: every `nnx.Param`). The trainer never names a
family: add a file here and a config that selects it.
"""

import importlib
import pkgutil
from types import ModuleType

from jvision.errors import UserError

REQUIRED = ("build", "train_loss", "eval_metrics", "image_summaries")


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
