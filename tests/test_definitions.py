"""The package's networks, attention points and learning-rate schedules against the paper's
definitions, written out here independently of the package.

- The Wide ResNet and the generator are rebuilt below from plain `torch.nn`, layer by layer as
  docs/method.md#networks defines them; the reference WRN uses the key names of the
  reproducibility study's released state dicts, whose names and shapes are spelled out below
  (taken from the released WRN-16-1, WRN-16-2 and WRN-40-1 files; the files are not needed here).
  The package's networks must hold exactly those tensors and compute the same function.
- The attention points of every family (module names and the shapes of their outputs at 32x32)
  are pinned by name.
- Every recipe's optimiser and learning-rate schedule (docs/method.md#hyperparameters) is taken
  from the module the composed config builds (`configure_optimizers`) and stepped epoch by epoch
  (iteration by iteration for zero-shot) against the paper's numbers written here.
"""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn

from zskt_test_helpers import compose_run_config
from zskt.models import Generator, WideResNet
from zskt.models import families
from zskt.models.attention_points import AttentionPoints
from zskt.models.original_keys import to_zskt_state_dict


# ============================================================ the Wide ResNet of the paper (study's key names)
class StudyBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3; where the width changes the
    shortcut is a 1x1 conv (stride, no bias) of the *pre-activated* input, else the raw input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.batch_norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.batch_norm2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv_inp = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.batch_norm1(x))
        out = self.conv2(F.relu(self.batch_norm2(self.conv1(pre))))
        return out + (x if self.conv_inp is None else self.conv_inp(pre))


class StudyGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.nblockLayer = nn.Sequential(*[StudyBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                           for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        return self.nblockLayer(x)


class StudyWRN(nn.Module):
    """WRN-d-k: conv3x3 3->16; three groups of (d-4)/6 blocks, widths 16k, 32k, 64k, strides 1, 2, 2;
    head BN-ReLU-8x8 average pool-linear. Returns the logits and the three group outputs (after the
    residual add, before the head's BN-ReLU): the attention points."""

    def __init__(self, depth: int, k: int, classes: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = StudyGroup(n, 16, 16 * k, 1)
        self.block2 = StudyGroup(n, 16 * k, 32 * k, 2)
        self.block3 = StudyGroup(n, 32 * k, 64 * k, 2)
        self.batch_norm = nn.BatchNorm2d(64 * k)
        self.fc = nn.Linear(64 * k, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        g1 = self.block1(self.conv1(x))
        g2 = self.block2(g1)
        g3 = self.block3(g2)
        pooled = F.avg_pool2d(F.relu(self.batch_norm(g3)), 8).flatten(1)
        return self.fc(pooled), [g1, g2, g3]


def shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def listing_digest(state: dict[str, Tensor]) -> str:
    """sha256 of the sorted `key shape` lines of a state dict."""
    text = "\n".join(f"{key} {tuple(value.shape)}" for key, value in sorted(state.items()))
    return hashlib.sha256(text.encode()).hexdigest()


# The study's released WRN-16-1 (PreTrainedScratches/CIFAR10/wrn-16-1-seed-*-dict.pth, and every released
# WRN-16-1 student), key by key in the file's order.
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{name}", () if name == "num_batches_tracked" else (c,)) for name in BN]


RELEASED_WRN_16_1 = [
    ("conv1.weight", (16, 3, 3, 3)),
    *_bn("block1.nblockLayer.0.batch_norm1", 16), *_bn("block1.nblockLayer.0.batch_norm2", 16),
    ("block1.nblockLayer.0.conv1.weight", (16, 16, 3, 3)), ("block1.nblockLayer.0.conv2.weight", (16, 16, 3, 3)),
    *_bn("block1.nblockLayer.1.batch_norm1", 16), *_bn("block1.nblockLayer.1.batch_norm2", 16),
    ("block1.nblockLayer.1.conv1.weight", (16, 16, 3, 3)), ("block1.nblockLayer.1.conv2.weight", (16, 16, 3, 3)),
    *_bn("block2.nblockLayer.0.batch_norm1", 16), *_bn("block2.nblockLayer.0.batch_norm2", 32),
    ("block2.nblockLayer.0.conv1.weight", (32, 16, 3, 3)), ("block2.nblockLayer.0.conv2.weight", (32, 32, 3, 3)),
    ("block2.nblockLayer.0.conv_inp.weight", (32, 16, 1, 1)),
    *_bn("block2.nblockLayer.1.batch_norm1", 32), *_bn("block2.nblockLayer.1.batch_norm2", 32),
    ("block2.nblockLayer.1.conv1.weight", (32, 32, 3, 3)), ("block2.nblockLayer.1.conv2.weight", (32, 32, 3, 3)),
    *_bn("block3.nblockLayer.0.batch_norm1", 32), *_bn("block3.nblockLayer.0.batch_norm2", 64),
    ("block3.nblockLayer.0.conv1.weight", (64, 32, 3, 3)), ("block3.nblockLayer.0.conv2.weight", (64, 64, 3, 3)),
    ("block3.nblockLayer.0.conv_inp.weight", (64, 32, 1, 1)),
    *_bn("block3.nblockLayer.1.batch_norm1", 64), *_bn("block3.nblockLayer.1.batch_norm2", 64),
    ("block3.nblockLayer.1.conv1.weight", (64, 64, 3, 3)), ("block3.nblockLayer.1.conv2.weight", (64, 64, 3, 3)),
    *_bn("batch_norm", 64),
    ("fc.weight", (10, 64)), ("fc.bias", (10,)),
]
# Every released file: (depth, width) -> key count, trainable parameters, sha256 of its sorted
# `key shape` lines (listing_digest), and shapes that tell the widths apart.
RELEASED = {
    (16, 1): (82, 175_066, "0d804424147fe122c0e70bfa54be5035878816fd9e202a586efe0a5eb26e6c43",
              {"block1.nblockLayer.0.conv1.weight": (16, 16, 3, 3), "fc.weight": (10, 64)}),
    (16, 2): (83, 691_674, "5dc7f559e28d0ff56e4bfc99a39a05eeaeb119cb4f478d7dc22ec7b26d58a2cd",
              {"block1.nblockLayer.0.conv_inp.weight": (32, 16, 1, 1),
               "block1.nblockLayer.0.conv1.weight": (32, 16, 3, 3),
               "block3.nblockLayer.1.conv2.weight": (128, 128, 3, 3), "fc.weight": (10, 128)}),
    (40, 1): (226, 563_930, "1df6b33d8d7ac241e4161907eb541689e014bf226c34900522b4e27a2b39796d",
              {"block1.nblockLayer.5.conv2.weight": (16, 16, 3, 3), "block3.nblockLayer.5.batch_norm2.weight": (64,),
               "block3.nblockLayer.0.conv_inp.weight": (64, 32, 1, 1), "fc.weight": (10, 64)}),
}
# trainable parameters at 10 classes (docs/method.md#wide-resnet)
WRN_PARAMS = {(16, 1): 175_066, (16, 2): 691_674, (40, 1): 563_930, (40, 2): 2_243_546}


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BN statistic random, so that each one shows in the function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=g) * (0.3 if tensor.dim() > 1 else 0.2))
    return net


def test_the_reference_wrn_has_the_study_wrn_16_1_keys_and_shapes():
    assert len(RELEASED_WRN_16_1) == 82
    assert shapes(StudyWRN(16, 1).state_dict()) == dict(RELEASED_WRN_16_1)


@pytest.mark.parametrize("depth,width", sorted(RELEASED))
def test_the_reference_wrn_has_the_released_files_keys_and_shapes(depth, width):
    count, params, digest, some = RELEASED[(depth, width)]
    state = StudyWRN(depth, width).state_dict()
    assert len(state) == count
    assert sum(p.numel() for p in StudyWRN(depth, width).parameters()) == params == WRN_PARAMS[(depth, width)]
    assert {k: tuple(state[k].shape) for k in some} == some
    assert listing_digest(state) == digest


@pytest.mark.parametrize("depth,width", [(16, 1), (16, 2), (40, 1), (40, 2), (10, 2)])
def test_the_package_wrn_is_the_papers_wrn(depth, width):
    """The package's WRN holds exactly the reference's tensors (the study's keys, renamed) and, with
    the same weights, computes the same logits and group outputs, in eval mode and in train mode."""
    reference = randomise(StudyWRN(depth, width), seed=depth * 10 + width).double()
    net = WideResNet(depth, width, 10).double()
    mapped = to_zskt_state_dict(reference.state_dict())
    assert shapes(mapped) == shapes(net.state_dict())  # the same names, nothing missing, nothing extra
    net.load_state_dict(mapped, strict=True)
    if (depth, width) in WRN_PARAMS:
        assert sum(p.numel() for p in net.parameters()) == WRN_PARAMS[(depth, width)]

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for mode in ("eval", "train"):
        reference.train(mode == "train"), net.train(mode == "train")
        want_logits, want_groups = reference(x)
        logits, groups = net(x, return_features=True)
        torch.testing.assert_close(logits, want_logits, rtol=1e-9, atol=1e-9, msg=lambda m: f"{mode}: {m}")
        assert [tuple(g.shape[1:]) for g in groups] == [(16 * width, 32, 32), (32 * width, 16, 16), (64 * width, 8, 8)]
        for i, (got, want) in enumerate(zip(groups, want_groups, strict=True)):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=lambda m: f"{mode} group {i + 1}: {m}")
    # train mode moved both networks' BN statistics the same way
    for key, value in to_zskt_state_dict(reference.state_dict()).items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=1e-9, atol=1e-9, msg=lambda m: f"{key}: {m}")


def test_the_package_wrn_starts_from_the_papers_initialisation():
    """conv ~ N(0, sqrt(2 / (k * k * out_channels))), BN weight 1 and bias 0, linear bias 0."""
    torch.manual_seed(0)
    net = WideResNet(16, 2, 10)
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight.detach()
            std = math.sqrt(2.0 / (w.shape[2] * w.shape[3] * w.shape[0]))
            # the sample std of n normal draws is within 5 standard errors of the true one
            assert abs(float(w.std()) / std - 1) < 5 / math.sqrt(2 * w.numel()) + 1e-3, name
            assert abs(float(w.mean())) < 5 * std / math.sqrt(w.numel()), name
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    assert torch.equal(net.fc.bias, torch.zeros(10))


# ============================================================ the generator of the paper
class ReferenceGenerator(nn.Module):
    """z (100) -> Linear to 128x8x8 -> BN -> up x2 -> conv3x3 128->128 -> BN -> LReLU 0.2 -> up x2
    -> conv3x3 128->64 -> BN -> LReLU 0.2 -> conv3x3 64->3 -> BN(3, affine); no tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(100, 128 * 8 * 8)
        self.body = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(128, 128, 3, stride=1, padding=1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(128, 64, 3, stride=1, padding=1),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, 3, 3, stride=1, padding=1),
            nn.BatchNorm2d(3, affine=True),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.linear(z).view(z.shape[0], 128, 8, 8))


# the package's generator parameters, in order (its checkpoints' names)
GENERATOR_PARAMETERS = [
    ("fc.weight", (8192, 100)), ("fc.bias", (8192,)),
    ("bn0.weight", (128,)), ("bn0.bias", (128,)),
    ("conv1.weight", (128, 128, 3, 3)), ("conv1.bias", (128,)),
    ("bn1.weight", (128,)), ("bn1.bias", (128,)),
    ("conv2.weight", (64, 128, 3, 3)), ("conv2.bias", (64,)),
    ("bn2.weight", (64,)), ("bn2.bias", (64,)),
    ("conv3.weight", (3, 64, 3, 3)), ("conv3.bias", (3,)),
    ("bn3.weight", (3,)), ("bn3.bias", (3,)),
]


def test_the_generator_has_the_papers_layers():
    generator = Generator()
    assert [(k, tuple(p.shape)) for k, p in generator.named_parameters()] == GENERATOR_PARAMETERS
    assert sum(p.numel() for p in generator.parameters()) == 1_051_145
    assert sum(p.numel() for p in ReferenceGenerator().parameters()) == 1_051_145
    # the shape after each layer: the two upsamplings come before conv1 and before conv2
    seen = {}
    for name in ("fc", "bn0", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):
        getattr(generator, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(
            name, (tuple(i[0].shape[1:]), tuple(o.shape[1:]))))
    generator(torch.randn(2, 100))
    assert seen == {
        "fc": ((100,), (8192,)),
        "bn0": ((128, 8, 8), (128, 8, 8)),
        "conv1": ((128, 16, 16), (128, 16, 16)),
        "bn1": ((128, 16, 16), (128, 16, 16)),
        "conv2": ((128, 32, 32), (64, 32, 32)),
        "bn2": ((64, 32, 32), (64, 32, 32)),
        "conv3": ((64, 32, 32), (3, 32, 32)),
        "bn3": ((3, 32, 32), (3, 32, 32)),
    }


def test_the_package_generator_computes_the_papers_generator():
    reference = randomise(ReferenceGenerator(), seed=3).double()
    with torch.no_grad():
        reference.body[-1].weight.fill_(3.0)  # the last BN's scale: the output's range (no tanh to bound it)
    generator = Generator().double()
    ours, theirs = generator.state_dict(), reference.state_dict()
    # the same tensors in the same order (the paper's layer order); copy them across by position
    assert [tuple(v.shape) for v in ours.values()] == [tuple(v.shape) for v in theirs.values()]
    generator.load_state_dict(dict(zip(ours.keys(), theirs.values(), strict=True)), strict=True)
    z = torch.randn(16, 100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mode in ("train", "eval"):  # train: batch statistics, as it always runs while training
        reference.train(mode == "train"), generator.train(mode == "train")
        torch.testing.assert_close(generator(z), reference(z), rtol=1e-9, atol=1e-9, msg=lambda m: f"{mode}: {m}")
    # no tanh: the last BN's affine sets the range (here a std of 3 per channel)
    with torch.no_grad():
        assert float(generator.train()(z).std(dim=(0, 2, 3)).min()) > 2.9


# ============================================================ attention points, pinned
# family arch -> the default attention points and the (channels, height, width) of each at 32x32
ATTENTION_POINTS = {
    ("wrn", 16, 1): (["block1", "block2", "block3"], [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("wrn", 40, 2): (["block1", "block2", "block3"], [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    ("wrn", 10, 1): (["block1", "block2", "block3"], [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet", 8, None): (["layer1", "layer2", "layer3"], [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet", 20, None): (["layer1", "layer2", "layer3"], [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet", 56, None): (["layer1", "layer2", "layer3"], [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet", 18, None): (["layer1", "layer2", "layer3", "layer4"],
                           [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("resnet", 34, None): (["layer1", "layer2", "layer3", "layer4"],
                           [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("vgg", 11, None): (["features.2", "features.6", "features.13", "features.20"],
                        [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("vgg", 13, None): (["features.5", "features.12", "features.19", "features.26"],
                        [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("vgg", 16, None): (["features.5", "features.12", "features.22", "features.32"],
                        [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("vgg", 19, None): (["features.5", "features.12", "features.25", "features.38"],
                        [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
}


def arch_of(family: str, depth: int, width: int | None) -> dict:
    return {"family": family, "depth": depth, **({"width": width} if width else {}), "num_classes": 10}


@pytest.mark.parametrize("spec", list(ATTENTION_POINTS), ids=lambda s: "-".join(str(v) for v in s if v))
def test_each_familys_default_attention_points_are_these_modules(spec):
    names, sizes = ATTENTION_POINTS[spec]
    arch = arch_of(*spec)
    assert families.default_attention_layers(arch) == names
    assert families.attention_layers({"attention_layers": None}, arch) == names  # a config that leaves them null
    torch.manual_seed(0)
    net = families.build_network(arch).eval()
    with torch.no_grad():
        _, features = AttentionPoints(net, names, "student")(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in features] == sizes
    modules = dict(net.named_modules())
    if spec[0] == "vgg":  # the last ReLU of a stage, right before its max-pool
        for name in names:
            index = int(name.split(".")[1])
            assert isinstance(modules[name], nn.ReLU)
            assert isinstance(net.features[index + 1], nn.MaxPool2d), name


@pytest.mark.parametrize("role,family", [("student", "wrn"), ("teacher", "wrn"), ("student", "resnet"),
                                         ("student", "vgg")])
def test_the_composed_configs_attention_points_are_the_familys(tmp_path, role, family):
    """What zskt.run hands the methods: `families.attention_layers(cfg.<role>, arch)`."""
    cfg = compose_run_config(tmp_path, [f"{role}={family}"])
    node = cfg[role]
    assert node.attention_layers is None
    arch = families.arch_from_config(node, 10)
    names, _ = ATTENTION_POINTS[(family, arch["depth"], arch.get("width"))]
    assert families.attention_layers(node, arch) == names


@pytest.mark.parametrize("depth,width", [(16, 1), (40, 2)])
def test_the_wrn_attention_points_are_the_papers_group_outputs(depth, width):
    """The hooked default points of the package's WRN are the reference's three group outputs."""
    reference = randomise(StudyWRN(depth, width), seed=5).double().eval()
    net = WideResNet(depth, width, 10).double().eval()
    net.load_state_dict(to_zskt_state_dict(reference.state_dict()))
    points = AttentionPoints(net, families.default_attention_layers(arch_of("wrn", depth, width)), "student")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        _, got = points(x)
        _, want = reference(x)
    assert len(got) == 3
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda m: f"group {i + 1}: {m}")


# ============================================================ learning-rate schedules, epoch by epoch
# The scratch recipe (teachers, full-data students, no-teacher few-shot) and KD+AT: SGD lr 0.1, momentum
# 0.9, Nesterov, weight decay 5e-4; lr x 0.2 after 30 %, 60 % and 80 % of the epochs; 200 epochs CIFAR-10,
# 100 SVHN; few-shot int(full * 5000 / M) epochs (CIFAR-100: its CIFAR-10 lengths and 500 per class;
# digits: 30 epochs and 144 per class).
# (dataset, M) -> (epochs, the epochs from which the lr is 0.02, 0.004 and 0.0008)
SGD_RECIPES = {
    ("cifar10", None): (200, (60, 120, 160)),
    ("cifar10", 10): (100_000, (30_000, 60_000, 80_000)),
    ("cifar10", 25): (40_000, (12_000, 24_000, 32_000)),
    ("cifar10", 50): (20_000, (6_000, 12_000, 16_000)),
    ("cifar10", 75): (13_333, (3_999, 7_999, 10_666)),
    ("cifar10", 100): (10_000, (3_000, 6_000, 8_000)),
    ("cifar10", 200): (5_000, (1_500, 3_000, 4_000)),  # Table 1's KD+AT
    ("svhn", None): (100, (30, 60, 80)),
    ("svhn", 10): (50_000, (15_000, 30_000, 40_000)),
    ("svhn", 25): (20_000, (6_000, 12_000, 16_000)),
    ("svhn", 50): (10_000, (3_000, 6_000, 8_000)),
    ("svhn", 75): (6_666, (1_999, 3_999, 5_332)),
    ("svhn", 100): (5_000, (1_500, 3_000, 4_000)),
    ("cifar100", None): (200, (60, 120, 160)),
    ("cifar100", 10): (10_000, (3_000, 6_000, 8_000)),
    ("digits", None): (30, (9, 18, 24)),
    ("digits", 10): (432, (129, 259, 345)),
}
FINETUNE_EPOCHS = {"cifar10": 200, "svhn": 100, "cifar100": 200, "digits": 30}
# (method, dataset) -> zero-shot iterations
ZERO_SHOT_ITERATIONS = {("zero_shot", "cifar10"): 80_000, ("zero_shot", "svhn"): 50_000,
                        ("zero_shot", "cifar100"): 80_000, ("zero_shot_modified", "cifar10"): 65_000}


def small_teacher() -> nn.Module:
    return WideResNet(10, 1, 10).eval().requires_grad_(False)


def build_module(cfg, m: int | None = None):
    """The method module zskt.run builds from this composed config (a WRN-16-1 student, the default)."""
    arch = families.arch_from_config(cfg.student, 10)
    parts = {}
    if cfg.method.name in ("scratch", "kd_at", "finetune"):
        parts["m"] = m
    if cfg.method.name != "scratch":
        teacher = small_teacher()
        parts["teacher"] = teacher
    if cfg.method.name in ("kd_at", "zero_shot", "zero_shot_modified"):
        parts["attention_layers"] = {"student": families.attention_layers(cfg.student, arch),
                                     "teacher": ["block1", "block2", "block3"]}
    if cfg.method.name == "finetune":
        parts["student_checkpoint"] = "zero-shot-student.pt"  # read by zskt.run, not by the module
    return instantiate(cfg.method, student=arch, channels_last=False, compile=False, _convert_="all", **parts)


def lrs_over(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> np.ndarray:
    """The lr of each of `steps` epochs (or iterations), stepping the scheduler after each, then the lr
    after the last one."""
    out = np.empty(steps + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no training here
        for e in range(steps):
            out[e] = optimizer.param_groups[0]["lr"]
            scheduler.step()
    out[steps] = optimizer.param_groups[0]["lr"]
    return out


def step_schedule(epochs: int, milestones: tuple[int, ...], lr: float = 0.1, gamma: float = 0.2) -> np.ndarray:
    """lr * gamma^(milestones reached) for epochs 0 .. epochs (the last: after training)."""
    e = np.arange(epochs + 1)
    return lr * gamma ** (e[:, None] >= np.array(milestones)[None, :]).sum(1)


def cosine(lr: float, n: int) -> np.ndarray:
    """Cosine annealing from lr to 0 over n steps, at steps 0 .. n."""
    return lr * (1 + np.cos(np.pi * np.arange(n + 1) / n)) / 2


@pytest.mark.parametrize("method", ["scratch", "kd_at"])
@pytest.mark.parametrize("dataset", ["cifar10", "svhn", "cifar100", "digits"])
def test_sgd_recipes_follow_the_papers_schedule_epoch_by_epoch(tmp_path, method, dataset):
    cfg = compose_run_config(tmp_path, [f"method={method}", f"dataset={dataset}"])
    cases = [(m, want) for (d, m), want in SGD_RECIPES.items() if d == dataset]
    assert cases
    for m, (epochs, milestones) in cases:
        module = build_module(cfg, m)
        assert module.max_epochs == epochs, f"M={m}"
        assert module.trainer_kwargs()["max_epochs"] == epochs, f"M={m}"
        configured = module.configure_optimizers()
        optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]
        assert type(optimizer) is torch.optim.SGD
        assert len(optimizer.param_groups) == 1
        group = optimizer.param_groups[0]
        assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"], group["dampening"]) == \
            (0.1, 0.9, True, 5e-4, 0), f"M={m}"
        assert {id(p) for p in group["params"]} == {id(p) for p in module.student.parameters()}
        assert schedule["interval"] == "epoch" and schedule.get("frequency", 1) == 1
        got = lrs_over(optimizer, schedule["scheduler"], epochs)
        want = step_schedule(epochs, milestones)
        wrong = np.flatnonzero(~np.isclose(got, want, rtol=1e-12, atol=0))
        assert wrong.size == 0, (f"{method} {dataset} M={m}: from epoch {wrong[0]} the lr is {got[wrong[0]]}, "
                                 f"the paper's {want[wrong[0]]} (lr x 0.2 from epochs {milestones} of {epochs})")


@pytest.mark.parametrize("dataset", ["cifar10", "svhn", "cifar100", "digits"])
def test_finetune_is_adam_with_a_cosine_over_its_epochs(tmp_path, dataset):
    """Adam lr 5e-4, no weight decay, cosine to 0 over the epochs (no few-shot stretch), stepped per epoch."""
    cfg = compose_run_config(tmp_path, ["method=finetune", f"dataset={dataset}"])
    epochs = FINETUNE_EPOCHS[dataset]
    for m in (10, 100):
        module = build_module(cfg, m)
        assert module.max_epochs == epochs
        configured = module.configure_optimizers()
        optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]
        assert type(optimizer) is torch.optim.Adam
        (group,) = optimizer.param_groups
        assert (group["lr"], group["weight_decay"]) == (5e-4, 0)
        assert {id(p) for p in group["params"]} == {id(p) for p in module.student.parameters()}
        assert schedule["interval"] == "epoch" and schedule.get("frequency", 1) == 1
        got = lrs_over(optimizer, schedule["scheduler"], epochs)
        np.testing.assert_allclose(got, cosine(5e-4, epochs), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("method,dataset", list(ZERO_SHOT_ITERATIONS))
def test_zero_shot_is_adam_with_a_cosine_over_the_iterations(tmp_path, method, dataset):
    """Adam, generator lr 1e-3 and student lr 2e-3, no weight decay, each cosine-annealed to 0 over
    the N iterations, stepped once per iteration (manual optimisation: the module steps them)."""
    cfg = compose_run_config(tmp_path, [f"method={method}", f"dataset={dataset}"])
    iterations = ZERO_SHOT_ITERATIONS[(method, dataset)]
    module = build_module(cfg)
    assert module.total_iterations == iterations
    assert module.automatic_optimization is False  # Lightning does not step the schedules per epoch
    optimizers, schedules = module.configure_optimizers()
    for optimizer, sched, net, lr in zip(optimizers, schedules, (module.generator, module.student), (1e-3, 2e-3),
                                         strict=True):
        assert type(optimizer) is torch.optim.Adam
        (group,) = optimizer.param_groups
        assert (group["lr"], group["weight_decay"]) == (lr, 0)
        assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}
        got = lrs_over(optimizer, sched["scheduler"], iterations)
        np.testing.assert_allclose(got, cosine(lr, iterations), rtol=1e-9, atol=1e-15)
