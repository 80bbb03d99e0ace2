"""The losses of docs/method.md#losses against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zskt.errors import UserError
from zskt.losses import (
    anchor_loss,
    attention_map,
    attention_transfer,
    distillation_loss,
    kd_at_loss,
    kl_divergence,
)
from zskt.models import WideResNet
from zskt.models.attention_points import AttentionPoints, pair_points

# two samples, two classes; student logits make s = (1/2, 1/2) and (e/(1+e), 1/(1+e)),
# teacher logits make t = (1/2, 1/2) for both samples
STUDENT = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
TEACHER = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
LOG1PE = math.log(1 + math.e)
# KL(t || s) per sample: 0, and 1/2 log(1/2 / (e/(1+e))) + 1/2 log(1/2 / (1/(1+e))) = log((1+e)/2) - 1/2
KL_SUM = math.log((1 + math.e) / 2) - 0.5


def test_kl_is_summed_and_divided_by_batch_times_classes():
    # B = 2, C = 2: the sum over everything divided by 4, not by the batch ("batchmean") alone
    assert float(kl_divergence(STUDENT, TEACHER)) == pytest.approx(KL_SUM / 4)
    batchmean = torch.nn.functional.kl_div(STUDENT.log_softmax(1), TEACHER.softmax(1), reduction="batchmean")
    assert float(batchmean) == pytest.approx(2 * float(kl_divergence(STUDENT, TEACHER)))  # the factor C


def test_kl_factor_of_classes_with_ten_classes():
    # one sample, C = 10, teacher one-hot-ish logits: KL = sum t (log t - log s), divided by 10
    student = torch.zeros(1, 10)
    teacher = torch.full((1, 10), -1e4)
    teacher[0, 3] = 0.0  # t = one-hot(3): KL = log 1 - log(1/10) = log 10
    assert float(kl_divergence(student, teacher)) == pytest.approx(math.log(10) / 10, rel=1e-6)


def test_kl_temperature_divides_the_logits():
    # logits (2, 0) at tau 2 are logits (1, 0) at tau 1
    student = torch.tensor([[2.0, 0.0]])
    assert float(kl_divergence(student, torch.zeros(1, 2), temperature=2.0)) == pytest.approx(
        float(kl_divergence(student / 2, torch.zeros(1, 2)))
    )
    assert float(kl_divergence(student / 2, torch.zeros(1, 2))) == pytest.approx(KL_SUM / 2)


def test_kl_is_zero_for_equal_logits():
    logits = torch.randn(4, 10)
    assert float(kl_divergence(logits, logits + 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_attention_map_is_normalised_channel_mean_of_squares():
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    features[0, 1] = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    # channel mean of squares: (1 + 1) / 2 = 1 at (0,0), (0 + 4) / 2 = 2 at (0,1); norm sqrt(5)
    expected = torch.tensor([[1.0, 2.0, 0.0, 0.0]]) / math.sqrt(5)
    torch.testing.assert_close(attention_map(features), expected)
    torch.testing.assert_close(attention_map(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 4))  # eps: no NaN


def test_attention_transfer_squares_and_averages_each_group():
    # group 1: maps (1, 0) vs (0, 1) for one sample: ((1)^2 + (-1)^2) / 2 = 1
    s1, t1 = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    s1[0, 0, 0, 0], t1[0, 0, 0, 1] = 3.0, 5.0
    # group 2: equal maps up to scale: 0 (the maps are normalised)
    s2 = torch.ones(2, 4, 2, 2)
    t2 = 7.0 * torch.ones(2, 1, 2, 2)
    total = attention_transfer([s1, s2], [t1, t2])
    assert float(total) == pytest.approx(1.0)  # squared and averaged, not the L2 norm sqrt(2)


def test_distillation_and_kd_at_weights():
    targets = torch.tensor([0, 0])
    # CE: sample 1 -log(1/2), sample 2 -log(e/(1+e)) = log(1+e) - 1
    ce = (math.log(2) + LOG1PE - 1) / 2
    # at tau = 1: (1 - 0.9) CE + 2 * 0.9 * 1 * KL
    expected = 0.1 * ce + 1.8 * KL_SUM / 4
    assert float(distillation_loss(STUDENT, TEACHER, targets, alpha=0.9, temperature=1.0)) == pytest.approx(expected)
    # at tau = 4 the second sample's logits are (1/4, 0); KL(uniform || softmax(a, 0)) = log(1 + e^a) - log 2 - a/2;
    # divided by B*C = 4 and weighted by 2 alpha tau^2 = 28.8
    kl4 = (math.log(1 + math.exp(0.25)) - math.log(2) - 0.125) / 4
    expected4 = 0.1 * ce + 2 * 0.9 * 16 * kl4
    assert float(distillation_loss(STUDENT, TEACHER, targets, alpha=0.9, temperature=4.0)) == pytest.approx(expected4)
    s_feat, t_feat = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    s_feat[0, 0, 0, 0], t_feat[0, 0, 0, 1] = 1.0, 1.0  # AT term 1 (see above)
    total = kd_at_loss(STUDENT, TEACHER, targets, [s_feat], [t_feat], alpha=0.9, temperature=4.0, beta=1000.0)
    assert float(total) == pytest.approx(expected4 + 1000.0)


def test_anchor_loss_sums_the_mean_absolute_differences():
    params = [torch.tensor([1.0, -1.0]), torch.tensor([[2.0]])]
    anchors = [torch.tensor([0.0, 1.0]), torch.tensor([[-1.0]])]
    # (|1| + |-2|) / 2 + |3| / 1 = 1.5 + 3
    assert float(anchor_loss(params, anchors)) == pytest.approx(4.5)
    assert float(anchor_loss(params, [p.clone() for p in params])) == 0.0


class _TwoGroups(nn.Module):
    """A network with only two feature groups: attention transfer cannot pair it with a WRN."""

    def __init__(self) -> None:
        super().__init__()
        self.group1, self.group2 = nn.Conv2d(3, 1, 1), nn.Conv2d(1, 1, 1, stride=2)

    def forward(self, x):
        return self.group2(self.group1(x)).mean((2, 3))


def test_attention_compatibility():
    # the attention points of two networks pair (zskt.models.attention_points), a WRN's are its three groups
    wrn = ["block1", "block2", "block3"]
    student = AttentionPoints(WideResNet(10, 1), wrn, "student")
    pair_points(student, AttentionPoints(WideResNet(16, 2), wrn, "teacher"), 32)  # any WRN pair works
    with pytest.raises(UserError) as info:
        pair_points(student, AttentionPoints(_TwoGroups(), ["group1", "group2"], "teacher"), 32)
    assert len(str(info.value).splitlines()) == 1 and "attention transfer" in str(info.value)
