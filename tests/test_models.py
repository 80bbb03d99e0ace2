"""Wide ResNets and the generator: exact sizes, feature shapes, bad architectures."""

import pytest
import torch

from zskt.errors import UserError
from zskt.models import Generator, WideResNet
from zskt.models.size_and_layout import count_parameters


@pytest.mark.parametrize(("depth", "width", "params"),
                         [(16, 1, 175_066), (16, 2, 691_674), (40, 1, 563_930), (40, 2, 2_243_546)])
def test_wrn_parameter_counts(depth, width, params):
    assert count_parameters(WideResNet(depth, width, 10)) == params


@pytest.mark.parametrize(("depth", "width"), [(16, 1), (40, 2)])
def test_wrn_group_outputs_have_the_attention_shapes(depth, width):
    logits, features = WideResNet(depth, width, 10).eval()(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 10)
    assert [tuple(f.shape) for f in features] == [(2, 16 * width, 32, 32), (2, 32 * width, 16, 16),
                                                  (2, 64 * width, 8, 8)]


def test_wrn_shortcut_only_where_widths_change():
    net = WideResNet(16, 1, 10)
    assert net.block1.layer[0].shortcut is None  # 16 -> 16
    assert net.block2.layer[0].shortcut is not None and net.block2.layer[1].shortcut is None


@pytest.mark.parametrize(("depth", "width"), [(17, 1), (4, 1), (16, 0)])
def test_bad_architectures_are_user_errors(depth, width):
    with pytest.raises(UserError, match="depth|width"):
        WideResNet(depth, width, 10)


def test_generator_shape_and_size():
    generator = Generator()
    assert count_parameters(generator) == 1_051_145
    images = generator(torch.randn(4, 100))
    assert images.shape == (4, 3, 32, 32)
    # the final affine BN places each channel at mean ~0, std ~1 over the batch
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
