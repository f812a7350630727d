"""Mean average precision of a detector over a whole split (VOC07 11-point, IoU > 0.5).

Needs a family whose `predict(model, batch, step)` gives `{boxes, scores, labels, valid}`
(fixed-size, per image); detections are gathered on the host and scored with
`jvision.ops.detection_metrics`. Reports `<name>/mAP` and `<name>/AP_<class>`.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jvision import models, sharding
from jvision.data import pipeline
from jvision.ops import detection_metrics


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        self.name = name
        self.mesh = mesh
        self.family = family
        self.num_classes = eval_config.get("num_classes", 10)
        self.iou_threshold = eval_config.get("iou_threshold", 0.5)
        self.data = pipeline.EvalData(config, eval_config.split)
        self._steps = {}  # Jitted prediction steps by graphdef.

    def _predict(self, graphdef, model_state, batch, step):
        """Detections and the ground truth of the whole global batch, on every process."""
        model = models.eval_model(graphdef, model_state)
        truth = {k: batch[k] for k in ("boxes", "labels", "mask")}
        return self.family.predict(model, batch, step), truth

    def run(self, graphdef, model_state, step: int) -> dict[str, float]:
        if graphdef not in self._steps:
            self._steps[graphdef] = jax.jit(  # Inputs keep their shardings (state: as trained).
                lambda *args: self._predict(graphdef, *args),
                out_shardings=sharding.replicated(self.mesh),
            )
        predict = self._steps[graphdef]
        detections, ground_truths = [], []
        for batch in self.data:
            batch = sharding.global_batch(self.mesh, batch)
            predicted, truth = jax.device_get(predict(model_state, batch, jnp.int32(step)))
            for index in np.flatnonzero(truth["mask"]):
                keep = predicted["valid"][index]
                detections.append(
                    {k: predicted[k][index][keep] for k in ("boxes", "scores", "labels")}
                )
                real = truth["labels"][index] >= 0
                ground_truths.append(
                    {"boxes": truth["boxes"][index][real], "labels": truth["labels"][index][real]}
                )
        aps = detection_metrics.voc07_average_precision(
            detections, ground_truths, self.num_classes, self.iou_threshold
        )
        results = {f"{self.name}/mAP": float(aps.mean())}
        results.update({f"{self.name}/AP_{c}": float(ap) for c, ap in enumerate(aps)})
        return results
