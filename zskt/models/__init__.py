"""Networks: the classifier families (Wide ResNets, CIFAR ResNets, VGGs, torchvision builders and
custom modules; `zskt.models.families` builds any of them from its arch), attention points by
forward hooks, the original repositories' WRN key maps, and the ZSKT generator. Wide ResNet and
generator are re-exported here; the other families are reached through `families`."""

from zskt.models.generator import Generator
from zskt.models.wide_resnet import WideResNet

__all__ = ["Generator", "WideResNet"]
