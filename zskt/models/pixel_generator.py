"""The data-free KD benchmark's generator (docs/method.md#notation-and-shared-parts), used by DFQ and
Fast: z in R^256 -> a 3x32x32 image in [0, 1] (sigmoid), then normalised with the dataset's mean
and std, so that `forward` gives the classifiers' input like the zero-shot generator does and
`pixels` gives the [0, 1] image a memory bank stores.

Linear(z -> hidden * (s/4)^2, bias) -> reshape -> BN(hidden) -> up x2 -> conv3x3 hidden->hidden (no bias)
-> BN -> LeakyReLU -> up x2 -> conv3x3 hidden->hidden/2 (no bias) -> BN -> LeakyReLU -> conv3x3 -> 3
(bias) -> sigmoid (zju-vipa/Fast-Datafree datafree/models/generator.py `Generator`, nz 256, ngf 64:
hidden = 2 * ngf = 128; 2,328,899 parameters). The submodule names `l1` and `conv_blocks` are the
original's (Fast's one-off re-initialisation names `l1.0` and `conv_blocks.0`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class PixelGenerator(nn.Module):
    def __init__(self, mean: list[float], std: list[float], z_dim: int = 256, image_size: int = 32,
                 channels: int = 3, hidden: int = 128, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.z_dim, self.hidden, self.init_size = z_dim, hidden, image_size // 4
        self.l1 = nn.Sequential(nn.Linear(z_dim, hidden * self.init_size**2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(hidden),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(negative_slope),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(hidden, hidden // 2, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(hidden // 2),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(hidden // 2, channels, 3, stride=1, padding=1),
            nn.Sigmoid(),
        )
        # the dataset's constants: fixed, not learned, not in the state dict
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def pixels(self, z: Tensor) -> Tensor:
        """The image in [0, 1]."""
        x = self.l1(z).view(z.shape[0], self.hidden, self.init_size, self.init_size)
        return self.conv_blocks(x)

    def normalize(self, pixels: Tensor) -> Tensor:
        return (pixels - self.mean) / self.std

    def forward(self, z: Tensor) -> Tensor:
        """The image in the classifiers' normalised input space."""
        return self.normalize(self.pixels(z))

    def clone(self) -> "PixelGenerator":
        """A copy with the same weights and BN buffers (Fast's fast weights), in train mode."""
        return copy.deepcopy(self).train()

    def reset_first_layers(self, generator: torch.Generator | None = None) -> None:
        """Fast's `reset_l0`: l1.0 weight ~ N(0, 0.02), bias 0; conv_blocks.0 (BN) weight ~ N(0, 0.02) (sic, not
        N(1, 0.02)), bias 0; that BN's running statistics are kept."""
        with torch.no_grad():
            for layer in (self.l1[0], self.conv_blocks[0]):
                noise = torch.randn(layer.weight.shape, generator=generator) * 0.02
                layer.weight.copy_(noise.to(layer.weight.device))
                layer.bias.zero_()
