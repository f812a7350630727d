"""Evaluations selected by config: `config.evals.<name> = {type, split, ...}`.

Every evaluation also takes `prefix` (its metrics' prefix; default: its name, so several
evaluations can report under `test/`) and `final_only` (True: only at the end of training and in
`jvision.evaluate`, for costly ones).

An evaluator module defines `Evaluator(name, family, config, eval_config, mesh)` with
`run(graphdef, model_state, step) -> {f"{name}/{metric}": float}`: it evaluates the model
`nnx.merge(graphdef, model_state)` (in eval mode) after `step` train steps, running its jitted
function over the data with `jvision.evaluation.OverBatches`. `jvision.evaluation.Evaluation`
runs every configured one.
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
        prefix = eval_config.get("prefix", name)
        evaluator = module.Evaluator(prefix, family, config, eval_config, mesh)
        evaluator.final_only = bool(eval_config.get("final_only", False))
        evaluators.append(evaluator)
    return evaluators
