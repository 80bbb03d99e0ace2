"""Adversarial belief matching (Algorithm 2 of the paper; docs/method.md#adversarial-belief-matching).

Network A is the student, B the teacher. On test images both classify alike (class i), each
of the C-1 other classes j is a target: starting from the clean normalised image, take K raw
gradient steps x <- x - xi * grad_x CE(A(x), j) (no sign, no clamp) and record p_j under A and
under B before every step (k = 0 is the clean image). The mean transition error (MTE) is the
mean of |p_j^A - p_j^B| over images, targets and k = 0..K-1.

The functions here are pure (tensors in, tensors out). `zskt.evaluation.transition_files` writes
their results (CSV, Figure 4), and `zskt.methods.belief_matching.BeliefMatching` is the
`method=abm` module that runs them after the test-accuracy pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zskt.errors import UserError

STEP_ON = ("student", "teacher")


@torch.no_grad()
def agreeing_images(student: nn.Module, teacher: nn.Module, images: Tensor, n_images: int, seed: int,
                    batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Indices into `images` of the first `n_images` of a `seed`-shuffled order on which both
    networks predict the same class, and that class. A one-line `UserError` if fewer exist."""
    predictions = [(student(chunk).argmax(1), teacher(chunk).argmax(1)) for chunk in images.split(batch_size)]
    student_pred = torch.cat([s for s, _ in predictions]).cpu()
    teacher_pred = torch.cat([t for _, t in predictions]).cpu()
    # the shuffle is drawn on the CPU from its own generator: the same subset on every device
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    chosen = order[(student_pred == teacher_pred)[order]]
    if len(chosen) < n_images:
        raise UserError(f"only {len(chosen)} of the {len(images)} test images get the same class from student and "
                        f"teacher, fewer than method.n_images={n_images}: lower method.n_images")
    chosen = chosen[:n_images]
    return chosen, student_pred[chosen]


def other_classes(classes: Tensor, num_classes: int) -> Tensor:
    """(N, C-1): for each image, every class but its own, in increasing order (the targets j != i)."""
    every = torch.arange(num_classes, device=classes.device).expand(len(classes), num_classes)
    return every[every != classes[:, None]].view(len(classes), num_classes - 1)


def _target_probability(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.detach().softmax(1).gather(1, targets[:, None]).squeeze(1)


def _walk(stepping: nn.Module, watching: nn.Module, x: Tensor, targets: Tensor, steps: int,
          xi: float) -> tuple[Tensor, Tensor]:
    """One batch of samples (an image and one target each): p_target under `stepping` and
    `watching` before each of `steps` gradient steps taken on `stepping`'s cross-entropy, (M, K)."""
    p_stepping, p_watching = [], []
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        logits = stepping(x)
        # the SUM of per-sample losses: each sample's input gradient is its own, not divided by
        # the batch size (eval-mode BN keeps the samples independent of each other)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, targets, reduction="sum"), x)
        with torch.no_grad():
            p_stepping.append(_target_probability(logits, targets))
            p_watching.append(_target_probability(watching(x), targets))
            x = x - xi * grad
    return torch.stack(p_stepping, 1), torch.stack(p_watching, 1)


def transition_curves(student: nn.Module, teacher: nn.Module, images: Tensor, classes: Tensor, num_classes: int,
                      steps: int, xi: float, step_on: str = "student", batch_images: int = 50,
                      progress: Callable[[int], object] | None = None) -> tuple[Tensor, Tensor]:
    """p_j under the student and under the teacher, each (N, C-1, K) on the CPU, for the N
    `images` (normalised, classified `classes` by both nets), their C-1 targets j (in
    `other_classes` order) and k = 0..K-1 (`steps` = K; k = 0 is the clean image).

    Steps follow the student's gradient, or the teacher's with `step_on="teacher"`. The C-1
    targets of `batch_images` images form one batch. Both networks must be in eval mode; runs
    with gradients enabled, so never call it under `torch.inference_mode`. `progress(n)` is
    called after every batch of n images (e.g. a tqdm bar's `update`).
    """
    if step_on not in STEP_ON:
        raise ValueError(f"step_on must be one of {STEP_ON}, not {step_on!r}")
    if student.training or teacher.training:
        raise ValueError("belief matching needs both networks in eval mode (BN running statistics)")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("belief matching needs input gradients: run it outside torch.inference_mode "
                           "(Trainer(inference_mode=False))")
    stepping, watching = (student, teacher) if step_on == "student" else (teacher, student)
    targets = other_classes(classes.to(images.device), num_classes)
    curves = []
    with torch.enable_grad():
        for batch, batch_targets in zip(images.split(batch_images), targets.split(batch_images)):
            x = batch.repeat_interleave(num_classes - 1, dim=0)  # image-major, matching targets.view(-1)
            p = _walk(stepping, watching, x, batch_targets.reshape(-1), steps, xi)
            curves.append([c.view(len(batch), num_classes - 1, steps).cpu() for c in p])
            if progress is not None:
                progress(len(batch))
    p_stepping, p_watching = (torch.cat(c) for c in zip(*curves))
    return (p_stepping, p_watching) if step_on == "student" else (p_watching, p_stepping)


def mean_and_stderr(per_image: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over images (dim 0) and its standard error, std (n-1) / sqrt(N)."""
    per_image = per_image.double()
    return per_image.mean(0), per_image.std(0) / math.sqrt(len(per_image))


def mean_transition_error(p_student: Tensor, p_teacher: Tensor) -> tuple[float, float]:
    """MTE = mean over images, targets and k of |p_student - p_teacher|, and its standard error.

    The error is over images: each image's mean over its targets and steps is one sample (the
    targets and steps of an image are not independent draws). Needs at least 2 images.
    """
    mte, stderr = mean_and_stderr((p_student - p_teacher).abs().mean(dim=(1, 2)))
    return float(mte), float(stderr)


def curve_summary(p: Tensor) -> tuple[Tensor, Tensor]:
    """Transition curve (K,) of one network: mean p_j over images and targets at each k, and its
    standard error over images (each image's mean over its targets is one sample)."""
    return mean_and_stderr(p.mean(dim=1))
