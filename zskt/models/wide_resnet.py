"""Pre-activation Wide ResNet WRN-d-k, as in the attention-transfer paper (docs/method.md#wide-resnet)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from zskt.errors import UserError


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
            if in_planes != out_planes
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # The 1x1 shortcut sees the pre-activated input, the identity sees the raw one:
        # that is what the original checkpoints were trained with.
        residual = x if self.shortcut is None else self.shortcut(pre)
        return out + residual


class BlockGroup(nn.Module):
    """`n` basic blocks; only the first changes width and resolution."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def blocks_per_group(depth: int) -> int:
    """Number of basic blocks in each of the three groups of a WRN of this depth."""
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise UserError(
            f"WRN depth {depth} is invalid: it must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...)"
        )
    return (depth - 4) // 6


class WideResNet(nn.Module):
    """WRN-`depth`-`width` for 32x32 inputs.

    `forward(x)` returns logits; `forward(x, return_features=True)` returns
    `(logits, [g1, g2, g3])`, the outputs of the three groups (after the residual add,
    before the final BN-ReLU), used by attention transfer.
    """

    def __init__(self, depth: int, width: int, num_classes: int = 10) -> None:
        super().__init__()
        n = blocks_per_group(depth)
        self.check_width(width)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"num_classes {num_classes} is invalid: a classifier needs at least 2 classes")
        self.depth, self.width, self.num_classes = depth, width, num_classes
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = BlockGroup(n, widths[0], widths[1], 1)
        self.block2 = BlockGroup(n, widths[1], widths[2], 2)
        self.block3 = BlockGroup(n, widths[2], widths[3], 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @staticmethod
    def check_width(width: int) -> None:
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise UserError(f"WRN width {width} is invalid: it must be a positive integer (1, 2, 4, ...)")

    @property
    def arch(self) -> dict:
        """Plain description of the architecture, enough to rebuild it."""
        return {"depth": self.depth, "width": self.width, "num_classes": self.num_classes}

    def forward(self, x: Tensor, return_features: bool = False):
        g1 = self.block1(self.conv1(x))
        g2 = self.block2(g1)
        g3 = self.block3(g2)
        # mean over space, not AdaptiveAvgPool2d: the latter has no deterministic CUDA backward
        logits = self.fc(F.relu(self.bn(g3)).mean(dim=(2, 3)))
        if return_features:
            return logits, [g1, g2, g3]
        return logits
