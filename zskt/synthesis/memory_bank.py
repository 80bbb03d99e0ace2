"""The memory bank of synthesised images DeepInversion and Fast distil from (docs/method.md#data-free-methods).

Images are stored as 8-bit pixels, truncated as the benchmark's PNG files are (clamp to [0, 1],
x 255, cast): the student learns from exactly what the reference pool holds, at a quarter of the
memory. The bank grows without limit (every synthesised batch stays). Batches are drawn as a
shuffled loader draws them: after every `add` a new permutation of the whole bank; each batch
takes the next `batch_size` indices (the last batch of a pass may be smaller) and a finished pass
reshuffles. The images, the permutation, the position in it and the random stream are the bank's
`state_dict`: in the checkpoint, so a resumed run draws the same batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zskt.rng import PicklableGenerators


def to_pixels(images: Tensor) -> Tensor:
    """[0, 1] float images -> uint8, truncated (not rounded) like the benchmark's PNG writer."""
    return (images.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()


class MemoryBank(PicklableGenerators):
    """A growing store of uint8 images on the CPU, sampled without replacement within a pass."""

    def __init__(self, seed: int) -> None:
        self.buffer = torch.empty(0, dtype=torch.uint8)  # grows by doubling: `images` is its filled part
        self.count = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    @property
    def images(self) -> Tensor:
        return self.buffer[:self.count]

    def __len__(self) -> int:
        return self.count

    def add(self, images: Tensor) -> None:
        """Store a batch of [0, 1] images and start a new shuffled pass over the whole bank."""
        pixels = to_pixels(images)
        if self.count + len(pixels) > len(self.buffer):
            grown = torch.empty((max(2 * len(self.buffer), self.count + len(pixels)), *pixels.shape[1:]),
                                dtype=torch.uint8)
            if self.count:
                grown[:self.count] = self.images
            self.buffer = grown
        self.buffer[self.count:self.count + len(pixels)] = pixels
        self.count += len(pixels)
        self._reshuffle()

    def _reshuffle(self) -> None:
        self.order = torch.randperm(len(self.images), generator=self.generator)
        self.position = 0

    def next_batch(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """The next batch of the current pass, as [0, 1] float images on `device`."""
        if len(self.images) == 0:
            raise RuntimeError("the memory bank is empty: synthesise before distilling")
        if self.position >= len(self.order):
            self._reshuffle()
        index = self.order[self.position:self.position + batch_size]
        self.position += len(index)
        return self.images[index].to(device).float().div_(255.0)

    def latest(self, n: int) -> Tensor:
        """The last `n` stored images, [0, 1] float (for sample grids)."""
        return self.images[-n:].float().div(255.0)

    def state_dict(self) -> dict:
        return {"images": self.images.clone(), "order": self.order, "position": self.position,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = state["images"].to(torch.uint8).clone()
        self.count = len(self.buffer)
        self.order = state["order"].long()
        self.position = int(state["position"])
        self.generator.set_state(state["generator"].to(torch.uint8).clone())
