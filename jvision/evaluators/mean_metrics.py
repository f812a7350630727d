"""Averages a family's per-example `eval_metrics` over a whole split (e.g. the test ELBO)."""

import jax
import jax.numpy as jnp
import ml_collections
from clu import metrics as clu_metrics

from jvision import models, sharding
from jvision.data import pipeline
from jvision.errors import UserError

EVAL_SEED_OFFSET = 10_000  # Eval noise differs from training noise but is fixed across evals.


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        if not hasattr(family, "eval_metrics"):
            raise UserError(
                f"evals.{name}: the mean_metrics evaluator needs {family.__name__}.eval_metrics"
            )
        self.name = name
        self.mesh = mesh
        self.family = family
        self.data = pipeline.EvalData(config, eval_config.split)
        self.base_key = jax.random.key(config.seed + EVAL_SEED_OFFSET)
        self._steps = {}  # Jitted eval steps by graphdef.

    def _eval_step(self, graphdef, model_state, batch, index, step):
        model = models.eval_model(graphdef, model_state)
        key = jax.random.fold_in(self.base_key, index)
        values = self.family.eval_metrics(model, batch, key, step)
        collection = clu_metrics.Collection.create(
            **{k: clu_metrics.Average.from_output(k) for k in values}
        )
        return collection.single_from_model_output(**values, mask=batch["mask"])

    def run(self, graphdef, model_state, step: int) -> dict[str, float]:
        if graphdef not in self._steps:
            self._steps[graphdef] = jax.jit(  # Inputs keep their shardings (state: as trained).
                lambda *args: self._eval_step(graphdef, *args),
                out_shardings=sharding.replicated(self.mesh),
            )
        eval_step = self._steps[graphdef]
        total = None
        for index, batch in enumerate(self.data):
            batch = sharding.global_batch(self.mesh, batch)
            metrics = eval_step(model_state, batch, index, jnp.int32(step))
            total = metrics if total is None else total.merge(metrics)
        return {f"{self.name}/{k}": float(v) for k, v in total.compute().items()}
