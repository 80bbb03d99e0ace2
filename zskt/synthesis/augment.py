"""The benchmark's augmentations of synthetic batches, differentiable and drawn from a given
(checkpointed) generator, so a resumed run augments exactly as the uninterrupted one.

torchvision's v2 transforms draw one set of parameters per call from the global random stream;
these need per-image parameters (`crop_flip`) from the run's own stream, and gradients through
them (the synthesis losses back-propagate to the images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each image by `padding`, crop back at a random offset and flip it with p = 0.5, independently
    per image (the CIFAR train transform the benchmark uses, on images in [0, 1])."""
    b, c, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(images.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images, (padding,) * 4) if padding else images
    rows = (offsets[0, :, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def roll_flip(images: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """DeepInversion's jitter: roll the whole batch by (d1, d2), each uniform in [-shift, shift], then flip
    the whole batch horizontally with p = 0.5 (one draw per batch)."""
    d1, d2 = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < 0.5)
    out = torch.roll(images, shifts=(d1, d2), dims=(2, 3))
    return out.flip(3) if flip else out
