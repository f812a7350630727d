"""Averages a family's per-example `eval_metrics` over a whole split (e.g. the test ELBO)."""

import functools

import jax
import ml_collections
from clu import metrics as clu_metrics
from flax import nnx

from jvision import sharding
from jvision.data import pipeline

EVAL_SEED_OFFSET = 10_000  # Eval noise differs from training noise but is fixed across evals.


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        self.name = name
        self.mesh = mesh
        self.data = pipeline.EvalData(config, eval_config.split)
        base_key = jax.random.key(config.seed + EVAL_SEED_OFFSET)
        self._step = None

        def eval_step(graphdef, state, batch, index):
            model, _ = nnx.merge(graphdef, state)  # The trainer's state is (model, optimizer).
            model.eval()
            values = family.eval_metrics(model, batch, jax.random.fold_in(base_key, index))
            collection = clu_metrics.Collection.create(
                **{k: clu_metrics.Average.from_output(k) for k in values}
            )
            return collection.single_from_model_output(**values, mask=batch["mask"])

        self._eval_step = eval_step

    def run(self, graphdef, state) -> dict[str, float]:
        if self._step is None:
            self._step = jax.jit(
                functools.partial(self._eval_step, graphdef),
                in_shardings=(
                    sharding.replicated(self.mesh),
                    sharding.batch_sharded(self.mesh),
                    None,
                ),
                out_shardings=sharding.replicated(self.mesh),
            )
        total = None
        for index, batch in enumerate(self.data):
            metrics = self._step(state, sharding.global_batch(self.mesh, batch), index)
            total = metrics if total is None else total.merge(metrics)
        return {f"{self.name}/{k}": float(v) for k, v in total.compute().items()}
