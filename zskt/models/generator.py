"""The ZSKT generator (docs/method.md#generator): z in R^100 -> a 3x32x32 image in normalised input space."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Generator(nn.Module):
    """Linear -> (128, s/4, s/4) -> BN -> up x2 -> conv-BN-LReLU -> up x2 -> conv-BN-LReLU -> conv -> BN.

    No tanh: the final affine BatchNorm places samples directly in the classifiers'
    normalised input space.
    """

    def __init__(
        self,
        z_dim: int = 100,
        image_size: int = 32,
        channels: int = 3,
        hidden: int = 128,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.z_dim, self.hidden, self.init_size = z_dim, hidden, image_size // 4
        self.negative_slope = negative_slope
        self.fc = nn.Linear(z_dim, hidden * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(hidden)
        self.conv1 = nn.Conv2d(hidden, hidden, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden // 2, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(hidden // 2)
        self.conv3 = nn.Conv2d(hidden // 2, channels, 3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(channels, affine=True)

    def forward(self, z: Tensor) -> Tensor:
        x = self.fc(z).view(z.shape[0], self.hidden, self.init_size, self.init_size)
        x = F.interpolate(self.bn0(x), scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn1(self.conv1(x)), self.negative_slope)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.bn2(self.conv2(x)), self.negative_slope)
        return self.bn3(self.conv3(x))
