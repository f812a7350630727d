"""The negative log-likelihood of a latent-variable model, estimated by importance sampling.

    nll_is_nats = −log (1/K) Σ_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x) independently,

averaged over the split (Burda et al. 2016 evaluate with K = 5,000). By Jensen's inequality its
expectation lies between the true −log p(x) (approached as K grows) and the negative ELBO (K = 1).
The family gives the log weights: `log_importance_weights(model, batch, key, step, num_samples)`
-> [B, num_samples] of log p(x, z_k) − log q(z_k | x). They are combined with a log-sum-exp, in
passes of `samples_per_pass` samples (a `lax.scan`, so memory holds one pass), on batches of
`batch_size` images (default: the run's `eval_batch_size`).

Config: `evals.<name> = dict(type="importance_sampled_nll", split=..., num_samples=5000,
samples_per_pass=250, batch_size=16, prefix="test", final_only=True)`; reports
`<prefix>/nll_is_nats`.
"""

import jax
import jax.numpy as jnp
import ml_collections

from jvision import metrics
from jvision.data import pipeline
from jvision.errors import UserError
from jvision.ops import distributions
from jvision.over_batches import OverBatches

SEED_OFFSET = 20_000  # Its samples differ from the training and mean_metrics noise.


def nll_per_example(family, model, batch, key, step, num_samples: int, samples_per_pass: int):
    """[B] importance-sampled −log p(x) of each image of `batch`, from `num_samples` samples
    drawn in `num_samples // samples_per_pass` passes."""
    passes = num_samples // samples_per_pass

    def one_pass(carry, pass_key):
        weights = family.log_importance_weights(model, batch, pass_key, step, samples_per_pass)
        return carry, weights

    _, weights = jax.lax.scan(one_pass, None, jax.random.split(key, passes))  # [P, B, S]
    weights = jnp.moveaxis(weights, 0, 1).reshape(weights.shape[1], -1)  # [B, K]
    return -distributions.log_mean_exp(weights, axis=1)


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        metrics.family_function(family, "log_importance_weights", name, "importance_sampled_nll")
        num_samples = int(eval_config.get("num_samples", 5000))
        samples_per_pass = int(eval_config.get("samples_per_pass", min(num_samples, 250)))
        if samples_per_pass < 1 or num_samples % samples_per_pass:
            raise UserError(
                f"evals.{name}: num_samples {num_samples} must be a positive multiple of "
                f"samples_per_pass {samples_per_pass}"
            )
        self.name = name
        config = ml_collections.ConfigDict(config.to_dict())
        config.eval_batch_size = int(eval_config.get("batch_size", config.eval_batch_size))
        self.data = pipeline.EvalData(config, eval_config.split, mesh=mesh)
        base_key = jax.random.key(config.seed + SEED_OFFSET)

        def sums(model, batch, step, index):
            key = jax.random.fold_in(base_key, index)
            nll = nll_per_example(family, model, batch, key, step, num_samples, samples_per_pass)
            return jnp.sum(nll * batch["mask"]), jnp.sum(batch["mask"])

        self._sums = OverBatches(sums, mesh)

    def run(self, graphdef, model_state, step: int) -> dict[str, float]:
        total, count = 0.0, 0.0
        for nll, real in jax.device_get(
            list(self._sums(graphdef, model_state, self.data, step, f"{self.name}/nll_is_nats"))
        ):
            total, count = total + float(nll), count + float(real)
        return {f"{self.name}/nll_is_nats": total / count}
