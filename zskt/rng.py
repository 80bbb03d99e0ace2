"""Random-number generators that survive pickling into spawned processes.

`torch.Generator` pickles its state as a shared-memory tensor, which a process started with
`spawn` (DDP with `start_method=spawn`, notebooks) cannot rebuild ("unable to resize file").
Objects that keep generators as attributes pickle them as plain bytes instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GeneratorState:
    """A `torch.Generator` as picklable bytes."""

    device: str
    state: bytes

    @classmethod
    def of(cls, generator: torch.Generator) -> "GeneratorState":
        return cls(str(generator.device), generator.get_state().numpy().tobytes())

    def restore(self) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.set_state(torch.frombuffer(bytearray(self.state), dtype=torch.uint8))
        return generator


class PicklableGenerators:
    """Mixin: `torch.Generator` attributes pickle as `GeneratorState` and come back as generators."""

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        return {k: GeneratorState.of(v) if isinstance(v, torch.Generator) else v for k, v in state.items()}

    def __setstate__(self, state: dict) -> None:
        restored = {k: v.restore() if isinstance(v, GeneratorState) else v for k, v in state.items()}
        if hasattr(super(), "__setstate__"):
            super().__setstate__(restored)
        else:
            self.__dict__.update(restored)
