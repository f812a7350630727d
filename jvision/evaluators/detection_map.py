"""Mean average precision of a detector over a whole split (VOC07 11-point, IoU > 0.5).

Needs a family with `predict(model, batch) -> {boxes, scores, labels, valid}` (fixed-size,
per image); detections are gathered on the host and scored with
`jvision.ops.detection_metrics`. Reports `<name>/mAP` and `<name>/AP_<class>`.
"""

import functools

import jax
import ml_collections
import numpy as np
from flax import nnx

from jvision import sharding
from jvision.data import pipeline
from jvision.ops import detection_metrics


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        if not hasattr(family, "predict"):
            raise TypeError(f"evaluator detection_map needs {family.__name__}.predict")
        self.name = name
        self.mesh = mesh
        self.family = family
        self.num_classes = eval_config.get("num_classes", 10)
        self.iou_threshold = eval_config.get("iou_threshold", 0.5)
        self.data = pipeline.EvalData(config, eval_config.split)
        self._step = None

    def _predict(self, graphdef, state, batch):
        """Detections and the ground truth of the whole global batch, on every process."""
        model, _ = nnx.merge(graphdef, state)  # The trainer's state is (model, optimizer).
        model.eval()
        truth = {k: batch[k] for k in ("boxes", "labels", "mask")}
        return self.family.predict(model, batch), truth

    def run(self, graphdef, state) -> dict[str, float]:
        if self._step is None:
            self._step = jax.jit(
                functools.partial(self._predict, graphdef),
                in_shardings=(sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)),
                out_shardings=sharding.replicated(self.mesh),
            )
        detections, ground_truths = [], []
        for batch in self.data:
            predicted, truth = jax.device_get(
                self._step(state, sharding.global_batch(self.mesh, batch))
            )
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
