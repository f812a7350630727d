"""Which metrics run when: the `final_only` ones only at the end."""

import jax
import pytest
from flax import nnx
from helpers import load_config

from jvision import metrics, models, sharding
from jvision.data import pipeline


@pytest.mark.parametrize("final", [False, True])
def test_final_only_evaluators_run_at_the_end(final):
    config = load_config("vae_mnist", "tiny")
    family = models.get(config.model)
    mesh = sharding.make_mesh()
    model = family.build(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.replicated(mesh))
    evaluators = metrics.build(family, config, mesh)
    results = metrics.run_all(evaluators, graphdef, state, 0, final=final)
    assert ("test/nll_is_nats" in results) == final and "test/nelbo_nats" in results
    first = pipeline.first_batch(config, config.data.eval_split)
    assert len(first["image"]) == config.eval_batch_size
