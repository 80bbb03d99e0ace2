"""VGG with batch norm for 32x32 inputs, from torchvision's layer configurations.

torchvision's `make_layers` builds the convolutional stages of `cfgs`; the ImageNet head (7x7
adaptive pool and three linear layers) is replaced by the CIFAR head of the data-free KD
literature: one linear layer on the 512-d feature left after the fifth pool.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from zskt.errors import UserError

CONFIGS = {11: "A", 13: "B", 16: "D", 19: "E"}  # torchvision's names of the VGG depths
ATTENTION_STAGES = 4  # stages whose outputs are the default attention points (32, 16, 8, 4 pixels)


def check_depth(depth: int) -> None:
    """A one-line error for a VGG depth torchvision has no configuration for."""
    if depth not in CONFIGS:
        raise UserError(f"VGG depth {depth} is not built: choose one of {', '.join(map(str, CONFIGS))}")


class CifarVGG(nn.Module):
    """VGG-`depth`-BN: torchvision's `features`, then a global mean and one linear layer."""

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__()
        check_depth(depth)
        self.depth = depth
        self.features = make_layers(cfgs[CONFIGS[depth]], batch_norm=True)
        self.classifier = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def attention_layers(depth: int) -> list[str]:
    """The default attention points: the last ReLU of each stage before each of the first four
    pools (the fifth stage is 2x2 at 32x32 inputs, too coarse for an attention map)."""
    check_depth(depth)
    names, index = [], 0
    for entry in cfgs[CONFIGS[depth]]:
        if entry == "M":
            names.append(f"features.{index - 1}")  # the ReLU right before this pool
            index += 1
        else:
            index += 3  # conv, BN, ReLU
    return names[:ATTENTION_STAGES]
