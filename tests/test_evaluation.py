"""The evaluation loop (`OverBatches`), the calibration built on it (every example counted once,
padding masked), pictures, and which evaluators run when."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from jvision import calibration, metrics, models, over_batches, sharding
from jvision.data import pipeline, sources


class Counted(nnx.Variable):
    """Calibrated state of the toy family."""


class Toy(nnx.Module):
    def __init__(self):
        self.total = Counted(jnp.zeros((28, 28, 1)))
        self.count = Counted(jnp.zeros(()))


def _toy_family() -> models.Family:
    """A family bound to its config, as `models.get` gives it: calibrated state only."""

    def statistics(model, batch, step):
        return {"total": batch["image"], "count": jnp.ones(batch["image"].shape[0]) + 0 * step}

    def apply(model, totals):
        model.total[...] = totals["total"]
        model.count[...] = totals["count"]

    calibration = models.Calibration(
        examples=lambda source: lambda index, rng: source[index],
        statistics=statistics,
        apply=apply,
    )
    return models.Family(
        name="toy",
        build=lambda rngs: Toy(),
        train_loss=None,
        predict=None,
        image_summaries=None,
        draw_summaries=None,
        calibration=calibration,
    )


def test_the_calibration_sums_every_example_of_the_split_once():
    config = load_config("vae_mnist", "tiny")
    config.data.train_split = "test"
    config.data.binarize = "none"
    config.eval_batch_size = 48  # 1,000 = 20 × 48 + 40: the last batch is padded.
    mesh = sharding.make_mesh()
    model = Toy()
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.replicated(mesh))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    calibrate = calibration.calibrator(_toy_family(), config, mesh, graphdef, shardings)
    calibrated = nnx.merge(graphdef, calibrate(state, 3))
    source = sources.open_source("embedded_mnist", "test")
    expected = sum(source[i]["image"].astype(np.float64) / 255 for i in range(len(source)))
    assert float(calibrated.count[...]) == 1000
    np.testing.assert_allclose(calibrated.total[...], expected, rtol=1e-5)


def test_families_without_calibration_keep_their_state():
    config = load_config("vae_mnist")
    keep = calibration.calibrator(models.get(config.model), config, None, None, None)
    state = {"a": 1}
    assert keep(state, 0) is state


def test_over_batches_passes_the_index_and_step_and_replicates():
    mesh = sharding.make_mesh()
    model = Toy()
    graphdef, state = nnx.split(model)

    def fn(model, batch, step, index):
        return batch["x"].sum() + 1000 * index + 10_000 * step

    run = over_batches.OverBatches(fn, mesh)
    batches = [{"x": np.full((8,), value, np.float32)} for value in (1.0, 2.0)]
    outputs = list(run(graphdef, state, batches, 3))
    assert [float(o) for o in outputs] == [30_008.0, 31_016.0]
    assert outputs[0].sharding.is_fully_replicated


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
