"""The CIFAR ResNets of the data-free distillation literature, built from torchvision's pieces.

- ResNet-18 / ResNet-34: torchvision's `ResNet` (BasicBlock, 64-128-256-512 channels) with the
  ImageNet stem (7x7 stride-2 conv, max-pool) swapped for a 3x3 stride-1 conv, as every CIFAR
  benchmark of the field does (DAFL, DFAD, CMI, Fast-Datafree).
- ResNet-8 / 20 / 32 / 56: the thin 16-32-64 CIFAR ResNets of He et al. (2016), depth 6n+2, from
  torchvision's `BasicBlock` with the option-B shortcut (1x1 conv + BN where the shape changes).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from zskt.errors import UserError

WIDE_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}  # torchvision's BasicBlock counts per stage
THIN_DEPTHS = (8, 20, 32, 56)
THIN_WIDTHS = (16, 32, 64)
DEPTHS = (*THIN_DEPTHS, *WIDE_BLOCKS)


def check_depth(depth: int) -> None:
    """A one-line error for a ResNet depth this family does not build."""
    if depth not in DEPTHS:
        raise UserError(f"ResNet depth {depth} is not built: choose one of {', '.join(map(str, sorted(DEPTHS)))}")


class ThinResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: a 16-channel 3x3 stem, three stages of n BasicBlocks
    (16, 32, 64 channels, the last two halving the resolution), global average pool, linear."""

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, THIN_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(THIN_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        stages, planes = [], THIN_WIDTHS[0]
        for i, width in enumerate(THIN_WIDTHS):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                downsample = None
                if j == 0 and (stride != 1 or planes != width):
                    downsample = nn.Sequential(nn.Conv2d(planes, width, 1, stride=stride, bias=False),
                                               nn.BatchNorm2d(width))
                blocks.append(BasicBlock(planes, width, stride if j == 0 else 1, downsample))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(THIN_WIDTHS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def cifar_resnet(depth: int, num_classes: int) -> nn.Module:
    """The CIFAR ResNet of this depth (see the module docstring)."""
    check_depth(depth)
    if depth in THIN_DEPTHS:
        return ThinResNet(depth, num_classes)
    net = ResNet(BasicBlock, WIDE_BLOCKS[depth], num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits its stem
    net.maxpool = nn.Identity()
    return net


def attention_layers(depth: int) -> list[str]:
    """The default attention points: every stage's output (32, 16, 8 and, for 18/34, 4 pixels)."""
    return ["layer1", "layer2", "layer3"] if depth in THIN_DEPTHS else ["layer1", "layer2", "layer3", "layer4"]
