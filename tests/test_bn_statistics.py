"""The BatchNorm-statistics loss (zskt/synthesis/bn_statistics.py) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zskt.errors import UserError
from zskt.synthesis.bn_statistics import BatchNormStatistics

# a batch of 2 images, 2 channels, 1 x 2 pixels: channel 0 holds 1, 3, 5, 7 (mean 4, biased variance 5),
# channel 1 holds 0, 0, 2, 2 (mean 1, biased variance 1)
X = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]], [[[5.0, 7.0]], [[2.0, 2.0]]]])


def layer(running_mean, running_var) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor(running_mean))
    bn.running_var.copy_(torch.tensor(running_var))
    return bn


def test_one_layer_is_the_sum_of_the_two_euclidean_distances():
    net = nn.Sequential(layer([4.0, 0.0], [1.0, 1.0]))
    stats = BatchNormStatistics(net)
    x = X.clone().requires_grad_(True)
    with stats.capture():
        net(x)
    loss = stats.loss()
    # ||(1, 1) - (5, 1)|| + ||(4, 0) - (4, 1)|| = 4 + 1 (unsquared norms, biased batch variance)
    assert float(loss) == pytest.approx(5.0)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # it pulls the images


def test_layers_add_up_and_the_input_of_each_layer_is_measured():
    first, second = layer([4.0, 0.0], [1.0, 1.0]), layer([0.0, 0.0], [2.0, 2.0])
    net = nn.Sequential(first, nn.Identity(), second)
    stats = BatchNormStatistics(net)
    with stats.capture():
        net(X)
    # the second layer's input is the first one's output: (x - running_mean) / sqrt(running_var + eps)
    y = (X - first.running_mean.view(1, 2, 1, 1)) / torch.sqrt(first.running_var.view(1, 2, 1, 1) + first.eps)
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    expected = 5.0 + float(torch.linalg.vector_norm(torch.tensor([2.0, 2.0]) - var) + torch.linalg.vector_norm(mean))
    assert float(stats.loss()) == pytest.approx(expected)


def test_the_moving_average_blends_earlier_batches_in():
    net = nn.Sequential(layer([4.0, 0.0], [1.0, 1.0]))
    stats = BatchNormStatistics(net, momentum=0.9)
    with stats.capture():
        net(X)
    assert float(stats.loss()) == pytest.approx(5.0)  # no average yet: the plain loss
    stats.update_average()  # average := this batch's (mean (4, 1), variance (5, 1))
    with stats.capture():
        net(torch.zeros_like(X))  # mean 0, variance 0: blended 0.9 * average
    # ||(1, 1) - (4.5, 0.9)|| + ||(4, 0) - (3.6, 0.9)||
    assert float(stats.loss()) == pytest.approx(math.sqrt(3.5**2 + 0.1**2) + math.sqrt(0.4**2 + 0.9**2))
    stats.update_average()  # 0.9 * average + 0.1 * (0, 0)
    torch.testing.assert_close(stats.average[0][0], torch.tensor([3.6, 0.9]))
    restored = BatchNormStatistics(nn.Sequential(layer([0.0, 0.0], [1.0, 1.0])), momentum=0.9)
    restored.load_state_dict(stats.state_dict())
    torch.testing.assert_close(restored.average[0][1], torch.tensor([4.5, 0.9]))


def test_outside_capture_nothing_is_measured_and_the_hooks_come_off():
    bn = layer([4.0, 0.0], [1.0, 1.0])
    stats = BatchNormStatistics(nn.Sequential(bn))
    bn(X)  # outside capture(): no term
    assert stats.terms == [None]
    assert len(bn._forward_hooks) == 1
    stats.remove()
    assert len(bn._forward_hooks) == 0
    with stats.capture():
        bn(X)
    with pytest.raises(RuntimeError):
        stats.loss()


def test_any_network_family_and_a_teacher_without_batchnorm_is_one_line():
    from zskt.models.families import build_network

    for arch in ({"family": "resnet", "depth": 18, "num_classes": 10}, {"family": "vgg", "depth": 11, "num_classes": 10}):
        net = build_network(arch).eval()
        stats = BatchNormStatistics(net)
        with stats.capture():
            net(torch.randn(2, 3, 32, 32))
        assert len(stats.layers) > 5 and torch.isfinite(stats.loss())
    with pytest.raises(UserError) as raised:
        BatchNormStatistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    message = str(raised.value)
    assert "\n" not in message and "no BatchNorm" in message and "method=dfq" in message and "method=fast" in message
