"""Evaluations selected by config: `config.evals.<name> = {type, split}`.

An evaluator module defines `Evaluator(name, family, config, eval_config, mesh)` with
`run(graphdef, model_state, step) -> {f"{name}/{metric}": float}`: it evaluates the model
`nnx.merge(graphdef, model_state)` (in eval mode) after `step` train steps.
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


def run_all(evaluators: list, graphdef, model_state, step: int) -> dict[str, float]:
    """Every evaluator's metrics, in one dict."""
    results = {}
    for evaluator in evaluators:
        results.update(evaluator.run(graphdef, model_state, step))
    return results
