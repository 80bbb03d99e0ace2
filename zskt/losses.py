"""The losses of docs/method.md#losses, as pure functions. The conventions set the balance between terms:

- KL is `kl_div(..., reduction="mean")`: summed over classes and batch, divided by B*C
  (not "batchmean", which would weigh it C times more against attention transfer);
- an attention map is the channel mean of A^2, flattened and L2-normalised per sample;
- an attention-transfer term is the *squared* difference of the maps averaged over batch
  and positions (not the L2 norm the paper writes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def kl_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) of the tempered softmaxes, summed and divided by batch * classes
    (the value of `kl_div(..., reduction="mean")`, written out: PyTorch warns on that reduction)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) / log_s.numel()


def attention_map(features: Tensor) -> Tensor:
    """(B, N, H, W) group output -> (B, H*W) L2-normalised spatial attention."""
    return F.normalize(features.float().pow(2).mean(dim=1).flatten(1), dim=1, eps=1e-12)


def attention_transfer(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    """Sum over the groups of the mean squared difference of student and teacher attention maps."""
    return sum(
        (attention_map(s) - attention_map(t)).pow(2).mean()
        for s, t in zip(student_features, teacher_features, strict=True)
    )


def zero_shot_student_loss(student_logits: Tensor, teacher_logits: Tensor, student_features: Sequence[Tensor],
                           teacher_features: Sequence[Tensor], beta: float, temperature: float = 1.0) -> Tensor:
    """The zero-shot student objective: KL + beta * AT."""
    return kl_divergence(student_logits, teacher_logits, temperature) + beta * attention_transfer(
        student_features, teacher_features
    )


def generator_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The adversary maximises the student-teacher disagreement: -KL(t || s)."""
    return -kl_divergence(student_logits, teacher_logits, temperature)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float,
                      temperature: float) -> Tensor:
    """(1 - alpha) CE + 2 alpha tau^2 KL, the knowledge-distillation part of KD+AT."""
    ce = F.cross_entropy(student_logits.float(), targets)
    kl = kl_divergence(student_logits, teacher_logits, temperature)
    return (1.0 - alpha) * ce + 2.0 * alpha * temperature**2 * kl


def kd_at_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, student_features: Sequence[Tensor],
               teacher_features: Sequence[Tensor], alpha: float, temperature: float, beta: float) -> Tensor:
    """Few-shot KD+AT: (1 - alpha) CE + 2 alpha tau^2 KL + beta * sum AT."""
    return distillation_loss(student_logits, teacher_logits, targets, alpha, temperature) + beta * attention_transfer(
        student_features, teacher_features
    )


def anchor_loss(parameters: Sequence[Tensor], anchors: Sequence[Tensor]) -> Tensor:
    """Sum over parameter tensors of mean |theta - theta_0| (the extra-M fine-tune's pull to its start)."""
    return sum((p - a).abs().mean() for p, a in zip(parameters, anchors, strict=True))


__all__ = [
    "anchor_loss",
    "attention_map",
    "attention_transfer",
    "distillation_loss",
    "generator_loss",
    "kd_at_loss",
    "kl_divergence",
    "zero_shot_student_loss",
]
