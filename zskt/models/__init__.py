"""Networks: the Wide ResNet classifiers and the ZSKT generator."""

from zskt.models.generator import Generator
from zskt.models.wide_resnet import WideResNet

__all__ = ["Generator", "WideResNet"]
