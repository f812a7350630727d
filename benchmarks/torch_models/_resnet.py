"""Twin of jvision/models/_resnet.py: ResNet-18 trunks truncated at a stride (no conv biases,
BatchNorm with PyTorch's defaults, which jvision spells momentum=0.9, epsilon=1e-5)."""

import math

import torch
from torch import nn

from . import _common

SCALES = (4, 8, 16, 32)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return _common.batch_norm(channels, flax_momentum=0.9, epsilon=1e-5)


def conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride)
        self.bn1 = batch_norm(cout)
        self.conv2 = conv(cout, cout, 3, 1)
        self.bn2 = batch_norm(cout)
        shortcut = [conv(cin, cout, 1, stride), batch_norm(cout)]
        self.shortcut = nn.ModuleList(shortcut if stride != 1 or cin != cout else [])

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        for layer in self.shortcut:
            x = layer(x)
        return torch.relu(x + y)


class ResNetTrunk(nn.Module):
    """[B, C, H, W] -> [B, 16·scale, H/scale, W/scale]."""

    def __init__(self, in_channels: int, scale: int):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"model.scale {scale} is not one of {SCALES}")
        self.conv1 = conv(in_channels, 64, 7, 2)
        self.bn1 = batch_norm(64)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        widths = (64, 128, 256, 512)[: int(math.log2(scale)) - 1]
        cins = (64, *widths[:-1])
        self.layers = nn.ModuleList(
            nn.ModuleList([BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)])
            for i, (cin, cout) in enumerate(zip(cins, widths, strict=True))
        )
        self.out_channels = widths[-1]

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for layer in self.layers:
            for block in layer:
                x = block(x)
        return x
