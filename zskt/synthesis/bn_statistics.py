"""The BatchNorm-statistics loss of DeepInversion, DFQ and Fast (docs/method.md#the-batchnorm-statistics-loss).

A forward hook on every BatchNorm layer of a network (any family: the layers are found by type)
reads the layer's *input* a and computes its per-channel mean mu_l and biased variance v_l over
every dimension but the channel one. The loss pulls them towards the layer's running statistics:

    L_BN = sum_l ( ||sigma^2_run,l - v_l||_2 + ||mu_run,l - mu_l||_2 )

Euclidean norms over the channels, not squared, not divided by the channel count, summed over
layers (the authors' code: NVlabs/DeepInversion deepinversion.py, zju-vipa/Fast-Datafree
datafree/hooks.py). With `momentum` lambda (Fast's `bn_mmt`), once an exponential moving average
(mu_bar_l, v_bar_l) of earlier synthetic batches' statistics exists, the layer's batch statistics
are blended with it, ((1 - lambda) v_l + lambda v_bar_l) and likewise for the mean; `update_average`
folds the last batch's statistics into the average (set to them the first time).

The hooks compute only inside `capture()`, so the teacher's other forward passes (distillation
targets, test accuracy) pay nothing; `remove()` takes them off.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from zskt.errors import UserError
from zskt.synthesis.losses import fp32

METHODS_THAT_NEED_IT = "method=dfq, method=deepinversion and method=fast"


def batchnorm_layers(network: nn.Module) -> list[_BatchNorm]:
    """The network's BatchNorm layers that keep running statistics, in module order."""
    return [m for m in network.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


class BatchNormStatistics:
    """Forward hooks on every BatchNorm layer of `network` and the loss they measure (module docstring)."""

    def __init__(self, network: nn.Module, momentum: float | None = None, role: str = "teacher") -> None:
        self.layers = batchnorm_layers(network)
        if not self.layers:
            raise UserError(f"the {role} has no BatchNorm layers with running statistics: {METHODS_THAT_NEED_IT} "
                            "match the teacher's BatchNorm statistics; use a teacher with BatchNorm, or method=zero_shot")
        self.momentum = momentum
        self.active = False
        self.terms: list[Tensor | None] = [None] * len(self.layers)
        self.last: list[tuple[Tensor, Tensor] | None] = [None] * len(self.layers)
        self.average: list[tuple[Tensor, Tensor]] | None = None  # the moving average (momentum only)
        self.handles = [layer.register_forward_hook(_Hook(self, i)) for i, layer in enumerate(self.layers)]

    def measure(self, index: int, module: _BatchNorm, inputs: tuple[Tensor, ...]) -> None:
        """The hook of layer `index`: its term of the loss, and its batch statistics."""
        if not self.active:
            return
        a = fp32(inputs[0])
        dims = [d for d in range(a.dim()) if d != 1]
        mean, var = a.mean(dims), a.var(dims, unbiased=False)
        self.last[index] = (mean.detach(), var.detach())
        if self.momentum is not None and self.average is not None:
            mean_bar, var_bar = (s.to(a.device) for s in self.average[index])
            mean = (1 - self.momentum) * mean + self.momentum * mean_bar
            var = (1 - self.momentum) * var + self.momentum * var_bar
        self.terms[index] = (torch.linalg.vector_norm(fp32(module.running_var) - var)
                             + torch.linalg.vector_norm(fp32(module.running_mean) - mean))

    @contextlib.contextmanager
    def capture(self):
        """Measure the statistics of the forward passes inside this block (the last one per layer counts)."""
        self.terms = [None] * len(self.layers)
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def loss(self) -> Tensor:
        """L_BN of the last forward pass inside `capture()`."""
        if any(t is None for t in self.terms):
            raise RuntimeError("BatchNormStatistics.loss() needs a forward pass of the network inside capture()")
        return torch.stack(self.terms).sum()

    def update_average(self) -> None:
        """Fold the last captured batch's statistics into the moving average (Fast's bn_mmt)."""
        if self.momentum is None or any(s is None for s in self.last):
            return
        if self.average is None:
            self.average = [(m.clone(), v.clone()) for m, v in self.last]
        else:
            lam = self.momentum
            self.average = [(lam * mb + (1 - lam) * m, lam * vb + (1 - lam) * v)
                            for (mb, vb), (m, v) in zip(self.average, self.last, strict=True)]

    def state_dict(self) -> dict:
        """The moving average (checkpoint state: a resumed run blends with the same statistics)."""
        if self.average is None:
            return {"average": None}
        return {"average": [torch.stack([m, v]).cpu() for m, v in self.average]}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        average = state.get("average")
        self.average = None if average is None else [(s[0].to(device), s[1].to(device)) for s in average]

    def remove(self) -> None:
        """Take the hooks off the network."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


class _Hook:
    """A forward hook that hands a BatchNorm layer's input to its `BatchNormStatistics` (an object, not a
    closure: a module carrying it still pickles, e.g. into DDP's spawned processes)."""

    def __init__(self, owner: BatchNormStatistics, index: int) -> None:
        self.owner, self.index = owner, index

    def __call__(self, module: _BatchNorm, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.owner.measure(self.index, module, inputs)
