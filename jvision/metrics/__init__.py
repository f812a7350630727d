"""Metrics selected by config: `config.evals.<name> = {type, split, ...}`, each a module here.

Every evaluation also takes `prefix` (its metrics' prefix; default: its name, so several
evaluations can report under `test/`) and `final_only` (True: only at the end of training and in
`jvision.evaluate`, for costly ones).

A metric module defines `Evaluator(name, family, config, eval_config, mesh)` with
`run(graphdef, model_state, step) -> {f"{name}/{metric}": float}`: it evaluates the model
`nnx.merge(graphdef, model_state)` (in eval mode) after `step` train steps, running its jitted
function over the data with `jvision.over_batches.OverBatches`. `run_all` runs every configured
one; the trainer and `jvision.evaluate` call it.
"""

import importlib
import pkgutil

from jvision.errors import UserError


def known() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def check(name: str, eval_config) -> None:
    """`UserError` unless `evals.<name>` names a metric module here."""
    if eval_config.type not in known():
        raise UserError(
            f"evals.{name}.type={eval_config.type!r} is unknown; known: {', '.join(known())}"
        )


def build(family, config, mesh) -> list:
    evaluators = []
    for name, eval_config in config.evals.items():
        check(name, eval_config)
        module = importlib.import_module(f"{__name__}.{eval_config.type}")
        prefix = eval_config.get("prefix", name)
        evaluator = module.Evaluator(prefix, family, config, eval_config, mesh)
        evaluator.final_only = bool(eval_config.get("final_only", False))
        evaluators.append(evaluator)
    return evaluators


def family_function(family, function: str, name: str, metric: str):
    """The family's `function` that the metric `metric` (configured as `evals.<name>`) needs;
    `UserError` when the family does not define it."""
    found = getattr(family, function)
    if found is None:
        raise UserError(
            f"evals.{name}: the {metric} metric needs the {family.name} family's {function}, "
            "which it does not define"
        )
    return found


def run_all(evaluators: list, graphdef, model_state, step: int, final: bool = True) -> dict:
    """The metrics of every evaluator for a (calibrated) model state; the `final_only` ones only
    when `final`."""
    results = {}
    for evaluator in evaluators:
        if final or not evaluator.final_only:
            results.update(evaluator.run(graphdef, model_state, step))
    return results
