"""Mean average precision of a detector over a whole split (VOC07 11-point, IoU > 0.5).

Needs a family whose `predict(model, batch, step)` gives `{boxes, scores, labels, valid}`
(fixed-size, per image); detections are gathered on the host and scored with
`jvision.ops.detection_metrics`. Reports `<name>/mAP` and `<name>/AP_<class>`.
"""

import jax
import ml_collections
import numpy as np

from jvision.data import pipeline
from jvision.ops import detection_metrics
from jvision.over_batches import OverBatches


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        self.name = name
        self.num_classes = eval_config.get("num_classes", 10)
        self.iou_threshold = eval_config.get("iou_threshold", 0.5)
        self.data = pipeline.EvalData(config, eval_config.split, mesh=mesh)

        def detect(model, batch, step, index):
            """Detections and the ground truth of the whole global batch, on every process."""
            del index
            truth = {k: batch[k] for k in ("boxes", "labels", "mask")}
            return family.predict(model, batch, step), truth

        self._detect = OverBatches(detect, mesh)

    def run(self, graphdef, model_state, step: int) -> dict[str, float]:
        predicted, truth = [], []
        for outputs in self._detect(graphdef, model_state, self.data, step):
            batch_predicted, batch_truth = jax.device_get(outputs)
            real = batch_truth.pop("mask") > 0  # Padding rows are dropped.
            predicted.append(jax.tree.map(lambda x, real=real: x[real], batch_predicted))
            truth.append(jax.tree.map(lambda x, real=real: x[real], batch_truth))
        predicted, truth = (
            jax.tree.map(lambda *x: np.concatenate(x), *t) for t in (predicted, truth)
        )
        scores = detection_metrics.score(
            predicted, truth, self.num_classes, self.iou_threshold, check_convention=False
        )
        return {f"{self.name}/{metric}": value for metric, value in scores.items()}
