"""A family's pictures of a batch: its `image_summaries` run inside jit, then its
`draw_summaries` on the host (`jvision.summaries` has the drawing helpers)."""

import jax
import numpy as np

from jvision import models
from jvision.over_batches import OverBatches


class Pictures:
    """A family's pictures of the first `count` rows of a batch: `image_summaries` jitted (its
    key from `seed`), then `draw_summaries` on the host."""

    def __init__(self, family: models.Family, mesh, seed: int, count: int):
        key = jax.random.key(seed)

        def outputs(model, batch, step, index):
            del index
            batch = jax.tree.map(lambda x: x[:count], batch)
            return family.image_summaries(model, batch, key, step)

        self._outputs = OverBatches(outputs, mesh)
        self._draw = family.draw_summaries

    def __call__(self, graphdef, model_state, batch: dict, step: int) -> dict[str, np.ndarray]:
        """`{name: [rows, columns, H, W, C] floats in [0, 1]}`."""
        arrays = self._outputs.first(graphdef, model_state, batch, step)
        return {name: np.asarray(grid) for name, grid in self._draw(arrays).items()}
