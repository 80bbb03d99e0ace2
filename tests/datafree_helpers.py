"""What the data-free method tests share: building a method from its config, a plain BN-statistics
loss written for the reference loops, and the tiny end-to-end overrides."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from zskt_test_helpers import compose_run_config

C = 10
STUDENT = {"depth": 10, "width": 1, "num_classes": C}
# the CIFAR-10 constants (conf/dataset/cifar10.yaml)
NORMALIZATION = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}
MEAN = torch.tensor(NORMALIZATION["mean"]).view(1, 3, 1, 1)
STD = torch.tensor(NORMALIZATION["std"]).view(1, 3, 1, 1)


def build(tmp_path: Path, method: str, teacher: nn.Module, **sizes):
    """The module `python -m zskt.run method=<method> dataset=cifar10 channels_last=false` builds, with its
    config's values as they are and only `sizes` changed."""
    cfg = compose_run_config(tmp_path, [f"method={method}", "dataset=cifar10"])
    return instantiate(cfg.method, student=dict(STUDENT), teacher=copy.deepcopy(teacher), normalization=NORMALIZATION,
                       channels_last=False, compile=False, _convert_="all", **sizes)


def plain_bn_loss(teacher: nn.Module, x: Tensor, average: list | None = None, momentum: float = 0.0):
    """Run the teacher on x; sum over its BN layers of ||var_run - v|| + ||mean_run - mu|| (biased batch
    variance of each layer's input; with `average`, the batch statistics blended with it). Returns
    (logits, loss, per-layer (mu, v))."""
    inputs = []
    layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [m.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for m in layers]
    logits = teacher(x)
    for h in handles:
        h.remove()
    loss, stats = 0.0, []
    for k, (bn, a) in enumerate(zip(layers, inputs)):
        mu = a.mean((0, 2, 3))
        v = ((a - mu.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
        stats.append((mu.detach(), v.detach()))
        if average is not None:
            mu = (1 - momentum) * mu + momentum * average[k][0]
            v = (1 - momentum) * v + momentum * average[k][1]
        loss = loss + (bn.running_var - v).norm() + (bn.running_mean - mu).norm()
    return logits, loss, stats


def kd(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """tau^2 KL(p_T || p_S), summed over classes, averaged over the batch."""
    p = (teacher_logits / tau).softmax(1)
    return tau**2 * (p * ((teacher_logits / tau).log_softmax(1) - (student_logits / tau).log_softmax(1))).sum(1).mean()


def tiny_overrides(zoo: Path, method: str, *extra: str) -> list[str]:
    """A run of `method` on digits with the session's WRN-10-2 teacher and a WRN-10-1 student."""
    return [f"method={method}", "student.depth=10", "teacher.depth=10", "teacher.width=2", f"paths.models={zoo}",
            "method.batch_size=16", *extra]


def tensors_equal(a: dict, b: dict, prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix)}
    return all(torch.equal(a[k], b[k]) for k in keys)


class NoBatchNormNet(nn.Module):
    """A user's network without BatchNorm (a teacher the data-free methods must refuse)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def tensorboard_view(run_dir: Path) -> tuple[dict[str, list[int]], list[str]]:
    """The run's TensorBoard scalars (tag -> the steps they were logged at) and its image tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    view = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})  # every event file there
    view.Reload()
    scalars = {tag: [e.step for e in view.Scalars(tag)] for tag in view.Tags()["scalars"]}
    return scalars, view.Tags()["images"]
