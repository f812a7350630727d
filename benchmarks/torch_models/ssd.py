"""Twin of jvision/models/ssd.py and jvision/ops/boxes.py: the tutorial's SSD on MNIST scenes.
Its priors are jvision's own (`jvision.ops.boxes.ssd_priors`): a constant input, not timed.

Same network (conv-BatchNorm-ReLU base and auxiliary stages, instance-normed heads with the box
and class convs fused into one), the same (ymin, xmin, ymax, xmax) box frame and prior order, and
the same MultiBoxLoss. Hard negatives are mined over the whole batch with a sort (jvision bisects
for the threshold instead: the same sum). Max-pooling is F.max_pool2d: on exact ties both give
the gradient to the window's first maximum (`jvision.ops.pooling`).

The tutorial's own module names its layers by position in module lists and has two convs per head
(a box conv Conv3x3(C, n·4) and a class conv Conv3x3(C, n·11), each after InstanceNorm2d), and
its priors swap each prior's row and column centres (docs/convert.md); `to_tutorial` and
`from_tutorial` convert a state_dict between the two layouts, `tutorial_priors` computes the
tutorial's priors.
"""

import itertools
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jvision.ops.boxes import ssd_priors  # The priors are an input: the same ones, computed once.

from . import _common

NUM_DIGITS = 10
BACKGROUND = NUM_DIGITS


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)
        self.norm = _common.batch_norm(cout, flax_momentum=0.9)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class Head(nn.Module):
    def __init__(self, cin: int, priors: int):
        super().__init__()
        self.priors = priors
        self.conv = nn.Conv2d(cin, priors * (4 + NUM_DIGITS + 1), 3, padding=1)

    def forward(self, x):
        out = self.conv(x).permute(0, 2, 3, 1)  # [B, H, W, priors·15]: jvision's order.
        boxes, classes = out[..., : self.priors * 4], out[..., self.priors * 4 :]
        return boxes.reshape(x.shape[0], -1, 4), classes.reshape(x.shape[0], -1, NUM_DIGITS + 1)


def standardize(images):
    flat = images.flatten(1)
    mean = flat.mean(1)[:, None, None, None]
    std = flat.std(1)[:, None, None, None]  # Unbiased, as torch.std and jvision's ddof=1.
    return (images - mean) / std.clamp_min(1e-6) + 0.5


class SSD(nn.Module):
    def __init__(self, base_widths, aux_widths, priors_per_cell):
        super().__init__()
        self.base = nn.ModuleList(
            nn.ModuleList([ConvBNReLU(cin, cout, 3, 1), ConvBNReLU(cout, cout, 3, 1)])
            for cin, cout in zip(base_widths[:-1], base_widths[1:], strict=True)
        )
        self.aux = nn.ModuleList(
            nn.ModuleList([ConvBNReLU(cin, cin // 2, 1, 1), ConvBNReLU(cin // 2, cout, 3, 2)])
            for cin, cout in zip(aux_widths[:-1], aux_widths[1:], strict=True)
        )
        map_widths = (*base_widths[-2:], *aux_widths[1:])
        self.heads = nn.ModuleList(
            Head(c, n) for c, n in zip(map_widths, priors_per_cell, strict=True)
        )

    def feature_maps(self, images):
        x = standardize(images)
        maps = []
        for index, stage in enumerate(self.base):
            if index:
                x = F.max_pool2d(x, 2)
            for layer in stage:
                x = layer(x)
            maps.append(x)
        maps = maps[-2:]
        for stage in self.aux:
            for layer in stage:
                x = layer(x)
            maps.append(x)
        return maps

    def forward(self, images):
        """[B, 1, 32, 32] -> box offsets [B, P, 4] and class logits [B, P, 11]."""
        outputs = [
            head(F.instance_norm(x, eps=1e-5))
            for x, head in zip(self.feature_maps(images), self.heads, strict=True)
        ]
        offsets, logits = zip(*outputs, strict=True)
        return torch.cat(offsets, 1), torch.cat(logits, 1)


def centers_to_corners(boxes):
    cy, cx, h, w = boxes.unbind(-1)
    return torch.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)


def iou(a, b):
    """Corner boxes a [..., M, 4], b [P, 4] -> [..., M, P]."""
    top_left = torch.maximum(a[..., :, None, :2], b[:, :2])
    bottom_right = torch.minimum(a[..., :, None, 2:], b[:, 2:])
    intersection = (bottom_right - top_left).clamp_min(0.0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[..., :, None] + area_b - intersection
    return intersection / union.clamp_min(1e-12)


def match(boxes, labels, priors, iou_threshold: float):
    """SSD matching for a batch (jvision.ops.boxes.match per image): boxes [B, M, 4], labels
    [B, M] (-1 pads), priors [P, 4] -> matched corner boxes [B, P, 4], classes [B, P]."""
    valid = labels >= 0
    overlaps = torch.where(valid[..., None], iou(boxes, centers_to_corners(priors)), -1.0)
    best_object = overlaps.argmax(1)  # [B, P]; argmax takes the first of ties, as jnp's.
    best_overlap = overlaps.amax(1)
    best_prior = overlaps.argmax(2)  # [B, M]
    rows = torch.arange(boxes.shape[0], device=boxes.device)
    for m in range(boxes.shape[1]):  # Each object takes its best prior; later objects win.
        prior, forced = best_prior[:, m], valid[:, m]
        best_object[rows, prior] = torch.where(forced, m, best_object[rows, prior])
        best_overlap[rows, prior] = torch.where(forced, 1.0, best_overlap[rows, prior])
    classes = torch.where(best_overlap >= iou_threshold, labels.gather(1, best_object), BACKGROUND)
    matched = boxes.gather(1, best_object[..., None].expand(-1, -1, 4))
    return matched, classes


def encode(boxes, priors, variances=(10.0, 5.0)):
    ymin, xmin, ymax, xmax = boxes.unbind(-1)
    centers = torch.stack([(ymin + ymax) / 2, (xmin + xmax) / 2], -1)
    sizes = torch.stack([ymax - ymin, xmax - xmin], -1)
    offset = (centers - priors[..., :2]) / (priors[..., 2:] / variances[0])
    scale = variances[1] * torch.log(sizes / priors[..., 2:])
    return torch.cat([offset, scale], -1)


def top_n_sum(values, n):
    """Sum of the `n` (a tensor) largest `values` [N], without reading n on the host."""
    ordered = values.sort(descending=True).values
    return torch.where(torch.arange(values.shape[0], device=values.device) < n, ordered, 0.0).sum()


class Detector(nn.Module):
    """The network, its priors (a buffer) and the loss settings, as jvision's Detector."""

    def __init__(self, model_config):
        super().__init__()
        m = model_config
        self.network = SSD(
            tuple(m.base_widths), tuple(m.aux_widths), tuple(len(r) + 1 for r in m.aspect_ratios)
        )
        priors = ssd_priors(
            tuple(m.feature_sizes), tuple(m.prior_scales), tuple(map(tuple, m.aspect_ratios))
        )
        self.register_buffer("priors", torch.from_numpy(priors))
        self.iou_threshold = float(m.iou_threshold)
        self.negatives_per_positive = float(m.negatives_per_positive)
        self.class_weight = float(m.class_weight)

    def forward(self, images):
        return self.network(images)

    def multibox_loss(self, offsets, logits, gt_boxes, gt_labels):
        with torch.no_grad():
            matched, classes = match(gt_boxes, gt_labels, self.priors, self.iou_threshold)
            targets = encode(matched, self.priors)
        positive = classes != BACKGROUND
        num_positives = positive.sum().clamp_min(1)
        box_loss = ((offsets - targets).abs() * positive[..., None]).sum() / (4 * num_positives)
        cross_entropy = F.cross_entropy(
            logits.reshape(-1, NUM_DIGITS + 1), classes.reshape(-1), reduction="none"
        ).view(classes.shape)
        negatives = torch.where(positive, 0.0, cross_entropy).flatten()
        num_hard = torch.round(self.negatives_per_positive * num_positives)
        hard_negatives = top_n_sum(negatives, num_hard)
        positives = torch.where(positive, cross_entropy, 0.0).sum()
        class_loss = self.class_weight * (positives + hard_negatives) / num_positives
        return {
            "loss": box_loss + class_loss,
            "box_loss": box_loss,
            "class_loss": class_loss,
            "num_positives": num_positives.float(),
        }

    def sample_noise(self, batch_size: int, generator=None):
        return None

    def loss(self, batch, noise=None, step=0):
        del noise, step  # Deterministic, no schedules.
        offsets, logits = self(batch["image"])
        terms = self.multibox_loss(offsets, logits, batch["boxes"], batch["labels"])
        return terms.pop("loss"), terms


def build(config) -> Detector:
    return Detector(config.model)


def jax_noise(config, key, batch_size: int):
    return None


# --- The tutorial's own module: its state_dict names and its priors' frame ---------------------

# Modules per stage of the tutorial's `base_conv.module_list` and `aux_conv.module_list`: (a Conv
# wrapper holding its nn.Conv2d as `.conv`, BatchNorm2d, activation) twice, then in the base a
# MaxPool2d (the last stage's removed, which changes no index before it).
MODULES_PER_STAGE = {"base": 7, "aux": 6}
MODULES_PER_LAYER = 3
TWIN_LAYER = re.compile(r"^network\.(base|aux)\.(\d+)\.(\d+)\.(conv|norm)\.(\w+)$")
TWIN_HEAD = re.compile(r"^network\.heads\.(\d+)\.conv\.(weight|bias)$")
# Head i of `pred_conv`: nn.Sequential(InstanceNorm2d (no tensors), nn.Conv2d), box and class.
TUTORIAL_HEADS = ("pred_conv.loc_module_list", "pred_conv.cla_module_list")


def tutorial_layer_name(name: str) -> str:
    """The tutorial's name of the twin's base or auxiliary tensor `name`: layer l of stage s is
    module M·s + 3·l of `{base,aux}_conv.module_list` (M = 7 in the base, 6 in the auxiliary
    stages) for its conv (`….conv.weight`), the next module for its BatchNorm (`….weight`,
    `….running_mean`, …). ValueError for another name."""
    layer = TWIN_LAYER.match(name)
    if layer is None:
        raise ValueError(f"{name} is not a base or auxiliary layer's tensor of the SSD twin")
    part, stage, index, module, tensor = layer.groups()
    position = MODULES_PER_STAGE[part] * int(stage) + MODULES_PER_LAYER * int(index)
    if module == "conv":
        return f"{part}_conv.module_list.{position}.conv.{tensor}"
    return f"{part}_conv.module_list.{position + 1}.{tensor}"


def tutorial_head_names(name: str) -> tuple[str, str]:
    """The tutorial's box and class conv names of the twin's fused head tensor `name`
    (`network.heads.{i}.conv.weight` -> `pred_conv.loc_module_list.{i}.1.weight` and
    `pred_conv.cla_module_list.{i}.1.weight`)."""
    index, tensor = TWIN_HEAD.match(name).groups()
    box, cls = (f"{heads}.{index}.1.{tensor}" for heads in TUTORIAL_HEADS)
    return box, cls


def tutorial_priors(model_config) -> np.ndarray:
    """The priors the tutorial's module computes for `model_config`'s feature sizes, scales and
    aspect ratios, in jvision's storage: centre boxes (cy, cx, h, w) [P, 4], float32, clipped to
    [0, 1], in jvision's order (map, row, column, ratio with the extra prior after ratio 1).

    The tutorial's prior at feature cell (row j, column k) of a d×d map of scale s is (c0, c1, e0,
    e1) = ((k+.5)/d, (j+.5)/d, s√r, s/√r), and its encode and decode set c0, e0 and offsets 0, 2
    against its boxes' first coordinate, a row (boxes (row_min, col_min, row_max, col_max), centre
    = c + offset·e/10, size = e·exp(offset/5)): the prior stands for row centre (k+.5)/d, column
    centre (j+.5)/d, height s√r, width s/√r, which is (cy, cx, h, w) in jvision's storage, where
    `jvision.ops.boxes.decode` takes offsets 0, 2 against cy, h with the same variances. So these
    are jvision's priors (`ssd_priors`: ((j+.5)/d, (k+.5)/d, s√r, s/√r)) with each prior's row and
    column centres swapped, except one extent: the tutorial's extra prior on the last map is 1
    wide and tall, jvision's √(s·1).
    """
    sizes, scales = tuple(model_config.feature_sizes), tuple(model_config.prior_scales)
    priors = []
    for index, (size, scale, ratios) in enumerate(
        zip(sizes, scales, model_config.aspect_ratios, strict=True)
    ):
        extra = np.sqrt(scale * scales[index + 1]) if index + 1 < len(scales) else 1.0
        for row, col in itertools.product(range(size), range(size)):
            cy, cx = (col + 0.5) / size, (row + 0.5) / size  # The tutorial's transposed frame.
            for ratio in ratios:
                priors.append([cy, cx, scale * np.sqrt(ratio), scale / np.sqrt(ratio)])
                if ratio == 1:
                    priors.append([cy, cx, extra, extra])
    return np.clip(np.asarray(priors, np.float32), 0.0, 1.0)


def to_tutorial(state: dict) -> dict:
    """The twin's state_dict -> the tutorial's module's (`SSD300(config, base_conv, aux_conv)`),
    in that module's order: each layer renamed (`tutorial_layer_name`), each head's fused conv
    split into the box conv (its first priors·4 output channels: offsets, prior by prior) and the
    class conv (the other priors·11: logits, prior by prior), `priors` left out (the tutorial
    computes its own, a plain attribute). Tensors unchanged (heads: copies)."""
    layers, boxes, classes = {}, {}, {}
    for name, value in state.items():
        if name == "priors":
            continue
        if TWIN_HEAD.match(name) is None:
            layers[tutorial_layer_name(name)] = value
            continue
        box, cls = tutorial_head_names(name)
        split = value.shape[0] // (4 + NUM_DIGITS + 1) * 4
        boxes[box], classes[cls] = value[:split].clone(), value[split:].clone()
    return {**layers, **boxes, **classes}


def from_tutorial(state: dict, model: Detector, model_config) -> dict:
    """The tutorial module's state_dict -> the twin's (`model`, the twin of `model_config`):
    `to_tutorial`'s renaming undone, each head's box and class convs concatenated along the
    output channels (box channels first), `priors` those the tutorial computes
    (`tutorial_priors`). A `num_batches_tracked` absent from `state` is left out; KeyError for
    another missing tensor."""
    out = {}
    for name in model.state_dict():
        if name == "priors":
            out[name] = torch.from_numpy(tutorial_priors(model_config))
        elif TWIN_HEAD.match(name) is not None:
            box, cls = tutorial_head_names(name)
            out[name] = torch.cat([state[box], state[cls]], 0)
        else:
            tutorial = tutorial_layer_name(name)
            if tutorial in state or not name.endswith("num_batches_tracked"):
                out[name] = state[tutorial]
    return out
