"""The few-shot rule (docs/method.md#few-shot-subsets): exactly M images per class from a seeded shuffle."""

from __future__ import annotations

import torch
from torch import Tensor

from zskt.errors import UserError


def few_shot_indices(labels: Tensor, m: int, seed: int) -> Tensor:
    """Indices of the first `m` images of each class in a shuffle of the set seeded by `seed`.

    Returns a sorted int64 tensor of length `m * num_classes`. `m` above the smallest
    class size is a `UserError`.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    if m > int(present.min()):
        raise UserError(
            f"dataset.m={m} is larger than the smallest class ({int(present.min())} images): "
            f"choose dataset.m <= {int(present.min())} or dataset.m=all"
        )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    # rank of each shuffled image within its class: a stable sort by class keeps shuffle order
    by_class = torch.sort(shuffled, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(len(labels)) - starts[by_class.values]
    keep_positions = by_class.indices[rank_sorted < m]
    return torch.sort(order[keep_positions]).values
