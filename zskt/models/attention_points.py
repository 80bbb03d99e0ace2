"""Attention points: the outputs of named submodules of any network, captured by forward hooks.

Attention transfer compares spatial attention maps at matching depths of student and teacher.
Which modules' outputs those are is configuration (`student.attention_layers`,
`teacher.attention_layers`; each family has a default, zskt.models.families), so any network
works without editing its `forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from zskt.errors import UserError


class AttentionPoints:
    """Runs a network and returns its logits with the outputs of `layers`, in the listed order.

    The hooks stay registered for the network's life and record only inside `__call__`, so the
    network's own forward (evaluation, the generator step's student pass) pays nothing for them.
    """

    def __init__(self, net: nn.Module, layers: Sequence[str], role: str) -> None:
        self.layers = list(layers)
        modules = dict(net.named_modules())
        missing = [name for name in self.layers if name not in modules or not name]
        if missing:
            top = ", ".join(name for name, _ in net.named_children())
            raise UserError(f"{role}.attention_layers names {', '.join(map(repr, missing))}, which the {role} network "
                            f"does not have (its top-level modules: {top}): name modules from its named_modules()")
        self.net = net
        self._outputs: dict[int, Tensor] | None = None
        for index, name in enumerate(self.layers):
            # a partial, not a closure: the module (and its hooks) must pickle for DDP's spawn launcher
            modules[name].register_forward_hook(partial(AttentionPoints._record, self, index))

    def _record(self, index: int, module: nn.Module, inputs, output) -> None:
        if self._outputs is not None:
            self._outputs[index] = output

    def __call__(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        self._outputs = {}
        try:
            logits = self.net(x)
            outputs = self._outputs
        finally:
            self._outputs = None
        if len(outputs) != len(self.layers):  # a listed module the forward never ran
            unused = [self.layers[i] for i in range(len(self.layers)) if i not in outputs]
            raise UserError(f"attention layer(s) {', '.join(unused)} did not run in the network's forward: "
                            "name modules the forward pass uses")
        return logits, [outputs[i] for i in range(len(self.layers))]

    def sizes(self, image_size: int) -> list[tuple[int, ...]]:
        """The spatial size of every point on one `image_size` input (eval mode: BN statistics untouched)."""
        was_training = self.net.training
        self.net.eval()
        try:
            param = next(self.net.parameters(), None)
            probe = torch.zeros(1, 3, image_size, image_size,
                                device=param.device if param is not None else None)
            with torch.no_grad():
                _, features = self(probe)
        finally:
            self.net.train(was_training)
        for name, feature in zip(self.layers, features):
            if not isinstance(feature, Tensor) or feature.dim() != 4:
                raise UserError(f"attention layer {name} outputs {type(feature).__name__}"
                                f"{'' if not isinstance(feature, Tensor) else f' of shape {tuple(feature.shape)}'}, "
                                "not a (batch, channels, height, width) map: name a convolutional stage")
        return [tuple(f.shape[-2:]) for f in features]


def pair_points(student: AttentionPoints, teacher: AttentionPoints, image_size: int) -> None:
    """Attention transfer pairs the points in order: equal counts and spatial sizes, else one line."""
    s_sizes, t_sizes = student.sizes(image_size), teacher.sizes(image_size)
    if s_sizes != t_sizes:
        def show(points: AttentionPoints, sizes: list) -> str:
            return "[" + ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in zip(points.layers, sizes)) + "]"
        raise UserError(f"attention points do not pair: student {show(student, s_sizes)} vs teacher "
                        f"{show(teacher, t_sizes)}: set student.attention_layers / teacher.attention_layers to lists "
                        "of equal length and matching sizes, or run without attention transfer (method.beta=0)")
