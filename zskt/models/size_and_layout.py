"""What every network family shares: its size, and channels_last memory."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in model.parameters())


def set_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    """Move a network to channels_last memory (faster convolutions) when `enabled`."""
    return model.to(memory_format=torch.channels_last) if enabled else model
