"""Averages a family's per-example `eval_metrics` over a whole split (e.g. the test ELBO)."""

import functools

import jax
import ml_collections
from clu import metrics as clu_metrics

from jvision import metrics
from jvision.data import pipeline
from jvision.over_batches import OverBatches

EVAL_SEED_OFFSET = 10_000  # Eval noise differs from training noise but is fixed across evals.


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        eval_metrics = metrics.family_function(family, "eval_metrics", name, "mean_metrics")
        self.name = name
        self.data = pipeline.EvalData(config, eval_config.split, mesh=mesh)
        base_key = jax.random.key(config.seed + EVAL_SEED_OFFSET)

        def averages(model, batch, step, index):
            values = eval_metrics(model, batch, jax.random.fold_in(base_key, index), step)
            collection = clu_metrics.Collection.create(
                **{k: clu_metrics.Average.from_output(k) for k in values}
            )
            return collection.single_from_model_output(**values, mask=batch["mask"])

        self._averages = OverBatches(averages, mesh)

    def run(self, graphdef, model_state, step: int) -> dict[str, float]:
        batches = self._averages(graphdef, model_state, self.data, step, self.name)
        merged = functools.reduce(lambda a, b: a.merge(b), batches)
        return {f"{self.name}/{k}": float(v) for k, v in merged.compute().items()}
