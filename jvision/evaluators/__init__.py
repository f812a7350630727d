"""Evaluations selected by config: `config.evals.<name> = {type, split}`.

An evaluator module defines `Evaluator(name, family, config, eval_config, mesh)` with
`run(graphdef, state) -> {f"{name}/{metric}": float}`.
"""

import importlib
import pkgutil

from jvision.errors import UserError


def known() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def build(family, config, mesh) -> list:
    evaluators = []
    for name, eval_config in config.evals.items():
        if eval_config.type not in known():
            raise UserError(
                f"evals.{name}.type={eval_config.type!r} is unknown; known: {', '.join(known())}"
            )
        module = importlib.import_module(f"{__name__}.{eval_config.type}")
        evaluators.append(module.Evaluator(name, family, config, eval_config, mesh))
    return evaluators
