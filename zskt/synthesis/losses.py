"""The data-free methods' losses (docs/method.md#data-free-methods), as pure functions, in the
conventions of the benchmark's code (zju-vipa/Fast-Datafree datafree/criterions.py, NVlabs/DeepInversion):
KL is summed over classes and averaged over the batch ("batchmean"), not the package's zero-shot
convention (divided by batch * classes, zskt.losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fp32(x: Tensor) -> Tensor:
    """At least fp32: half-precision values are promoted (the losses are computed in fp32), fp64 is kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """tau^2 KL(p_T || p_S) of the tempered softmaxes, batchmean: the student's only loss."""
    log_s = F.log_softmax(fp32(student_logits) / temperature, dim=1)
    log_t = F.log_softmax(fp32(teacher_logits) / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def per_sample_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """tau^2 KL(p_T || p_S) of each sample (summed over classes), shape (B,)."""
    log_s = F.log_softmax(fp32(student_logits) / temperature, dim=1)
    log_t = F.log_softmax(fp32(teacher_logits) / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(1) * temperature**2


def one_hot_loss(teacher_logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """CE of the teacher's logits against `targets` (sampled classes), or against its own argmax (DFQ)."""
    logits = fp32(teacher_logits)
    return F.cross_entropy(logits, logits.argmax(1) if targets is None else targets)


def class_balance(teacher_logits: Tensor) -> Tensor:
    """sum_c pbar_c log pbar_c with pbar the batch-mean teacher softmax: the negative batch entropy
    (DFQ's information-entropy term; minimising it spreads the batch over the classes)."""
    p = F.softmax(fp32(teacher_logits), dim=1).mean(0)
    return (p * torch.log(p)).sum()


def masked_adversarial(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Fast's adversarial term: -(1/B) sum_i m_i KL_i(T || S), m_i = 1 where student and teacher agree
    on the class (the mask carries no gradient; the mean runs over all B samples)."""
    mask = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return -(per_sample_kl(student_logits, teacher_logits, temperature) * mask).mean()


def jensen_shannon(student_logits: Tensor, teacher_logits: Tensor, temperature: float, clamp: tuple[float, float]) -> Tensor:
    """DeepInversion's JS divergence (NVlabs deepinversion.py): P = softmax(s / tau), Q = softmax(t / tau),
    M = (P + Q) / 2 formed first, then P, Q, M clamped to `clamp`; 1/2 KL(M || P) + 1/2 KL(M || Q), batchmean."""
    p = F.softmax(fp32(student_logits) / temperature, dim=1)
    q = F.softmax(fp32(teacher_logits) / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(*clamp)
    p, q = p.clamp(*clamp), q.clamp(*clamp)
    kl = lambda log_x: F.kl_div(log_x, m, reduction="batchmean")  # noqa: E731 - KL(M || x)
    return 0.5 * kl(torch.log(p)) + 0.5 * kl(torch.log(q))


def total_variation(x: Tensor) -> Tensor:
    """Sum over four directions (horizontal, vertical, both diagonals) of the mean absolute difference of
    neighbouring pixels (the benchmark's TV prior)."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.abs().mean() + d2.abs().mean() + d3.abs().mean() + d4.abs().mean()


__all__ = ["class_balance", "fp32", "jensen_shannon", "kd_loss", "masked_adversarial", "one_hot_loss", "per_sample_kl",
           "total_variation"]
