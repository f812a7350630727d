"""A detector's average precision over a whole split: PASCAL VOC07's 11-point mAP at IoU > 0.5
(the SSD tutorial's headline), and COCO's metrics from pycocotools beside it.

Needs a family whose `predict(model, batch, step)` gives `{boxes, scores, labels, valid}`
(fixed-size, per image); detections are gathered on the host and scored with
`jvision.ops.detection_metrics` and `jvision.ops.coco_metrics`. Reports `<name>/mAP`,
`<name>/AP_<class>` and, unless `coco=False`, `<name>/coco_AP`, `coco_AP50`, `coco_AP75`,
`coco_AP_small`, `coco_AP_medium`, `coco_AP_large`, `coco_AR1`, `coco_AR10`, `coco_AR100`,
`coco_AR_small`, `coco_AR_medium` and `coco_AR_large` (docs/outputs.md).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jvision.data import pipeline
from jvision.ops import coco_metrics, detection_metrics
from jvision.over_batches import OverBatches


class Evaluator:
    def __init__(self, name: str, family, config: ml_collections.ConfigDict, eval_config, mesh):
        self.name = name
        self.num_classes = eval_config.get("num_classes", 10)
        self.iou_threshold = eval_config.get("iou_threshold", 0.5)
        self.coco = bool(eval_config.get("coco", True))
        self.data = pipeline.EvalData(config, eval_config.split, mesh=mesh)

        def detect(model, batch, step, index):
            """Detections and the ground truth of the whole global batch, on every process."""
            del index
            truth = {k: batch[k] for k in ("boxes", "labels", "mask")}
            size = jnp.asarray(batch["image"].shape[1:3])  # Pixels, for COCO's sizes.
            truth["image_size"] = jnp.broadcast_to(size, (batch["image"].shape[0], 2))
            return family.predict(model, batch, step), truth

        self._detect = OverBatches(detect, mesh)

    def run(self, graphdef, model_state, step: int) -> dict[str, float]:
        predicted, truth = [], []
        for outputs in self._detect(graphdef, model_state, self.data, step, self.name):
            batch_predicted, batch_truth = jax.device_get(outputs)
            real = batch_truth.pop("mask") > 0  # Padding rows are dropped.
            predicted.append(jax.tree.map(lambda x, real=real: x[real], batch_predicted))
            truth.append(jax.tree.map(lambda x, real=real: x[real], batch_truth))
        predicted, truth = (
            jax.tree.map(lambda *x: np.concatenate(x), *t) for t in (predicted, truth)
        )
        image_size = tuple(truth.pop("image_size")[0])
        scores = detection_metrics.score(
            predicted, truth, self.num_classes, self.iou_threshold, check_convention=False
        )
        if self.coco:
            scores.update(coco_metrics.score(predicted, truth, image_size, self.num_classes))
        return {f"{self.name}/{metric}": value for metric, value in scores.items()}
