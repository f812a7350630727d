"""The calibration: every example of the split counted once, padding masked; families without one
keep their state."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import load_config

from jvision import calibration, models, sharding
from jvision.data import sources


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
