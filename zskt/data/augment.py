"""Batched, per-sample augmentation and normalisation of uint8 image tensors on any device.

torchvision's v2 transforms draw one set of random parameters per call, so applied to a
batch they would crop every image identically; the paper's recipe needs an independent
crop and flip per image, done here with one gather for the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Reflect-pad each image by `padding`, crop back at a random offset and flip half of them.

    `images` is (B, C, H, W) of any dtype; `generator` is a CPU generator, so the same seed
    gives the same augmentation on every device.
    """
    b, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(images.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype) if padding else images
    rows = (offsets[0, :, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def normalize(images: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """uint8 images -> float32 in the classifiers' normalised input space."""
    return TF.normalize(images.float().div_(255.0), mean, std)
