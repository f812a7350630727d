"""Twin of jvision/models/ssd.py and jvision/ops/boxes.py: the tutorial's SSD on MNIST scenes.
Its priors are jvision's own (`jvision.ops.boxes.ssd_priors`): a constant input, not timed.

Same network (conv-BatchNorm-ReLU base and auxiliary stages, instance-normed heads with the box
and class convs fused into one), the same (ymin, xmin, ymax, xmax) box frame and prior order, and
the same MultiBoxLoss. Hard negatives are mined over the whole batch with a sort (jvision bisects
for the threshold instead: the same sum). Max-pooling is F.max_pool2d (jvision takes elementwise
maxima of the four corners: the same values; only exact ties share the gradient there).

The tutorial's own module has two convs per head (a box head Conv3x3(C, n·4) and a class head
Conv3x3(C, n·11), each after InstanceNorm2d: docs/convert.md); `to_tutorial` and `from_tutorial`
convert a state_dict between the two layouts.
"""

import re

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


# --- The tutorial's layout: separate box and class convs per head ------------------------------

FUSED_CONV = re.compile(r"^(network\.heads\.\d+)\.conv\.(weight|bias)$")
SPLIT_CONV = re.compile(r"^(network\.heads\.\d+)\.(box_conv|class_conv)\.(weight|bias)$")
OPTIONAL_IN_TUTORIAL = ("priors",)  # The tutorial computes its priors: no buffer to load.


def to_tutorial(state: dict) -> dict:
    """The twin's state_dict with each head's fused conv `network.heads.{i}.conv.{weight,bias}`
    split into `network.heads.{i}.box_conv.*` (its first priors·4 output channels: offsets, prior
    by prior) and `network.heads.{i}.class_conv.*` (the other priors·11: logits, prior by prior);
    every other name and tensor unchanged."""
    out = {}
    for name, value in state.items():
        fused = FUSED_CONV.match(name)
        if fused is None:
            out[name] = value
            continue
        head, kind = fused.groups()
        boxes = value.shape[0] // (4 + NUM_DIGITS + 1) * 4
        out[f"{head}.box_conv.{kind}"] = value[:boxes].clone()
        out[f"{head}.class_conv.{kind}"] = value[boxes:].clone()
    return out


def from_tutorial(state: dict, model: Detector) -> dict:
    """`to_tutorial`'s inverse: each head's `box_conv` and `class_conv` tensors concatenated
    along the output channels (box channels first) as the fused `conv`; `priors`, when absent,
    from `model` (the twin of the same config: jvision's priors). KeyError when a head has one
    of its two convs only."""
    out = {}
    for name, value in state.items():
        split = SPLIT_CONV.match(name)
        if split is None:
            out[name] = value
            continue
        head, conv, kind = split.groups()
        if conv == "box_conv":
            partner = f"{head}.class_conv.{kind}"
            if partner not in state:
                raise KeyError(f"{name} without {partner}")
            out[f"{head}.conv.{kind}"] = torch.cat([value, state[partner]], 0)
        elif f"{head}.box_conv.{kind}" not in state:
            raise KeyError(f"{name} without {head}.box_conv.{kind}")
    if "priors" not in out:
        out["priors"] = model.priors.detach().clone()
    return out
