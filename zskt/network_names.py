"""How a network is named, without torch: its family, the config keys that describe it, the name people
write (WRN-16-1, ResNet-18) and its part of a model-zoo file name (wrn-16-1, resnet-18).

`zskt.models.families` builds networks from the same arches; this module stays free of torch so that
readers of results.json (scripts/summarize.py) and the configs' `${zskt_slug:}` resolver (registered in
`zskt.config.register_resolvers`) name a network without loading it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zskt.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

FAMILIES = ("wrn", "resnet", "vgg", "torchvision", "custom")
# the config keys of each family that describe the network (the rest: checkpoint, attention_layers, seed, ...)
ARCH_KEYS = {"wrn": ("depth", "width"), "resnet": ("depth",), "vgg": ("depth",),
             "torchvision": ("name", "kwargs"), "custom": ("target", "kwargs")}


def family_of(arch: Mapping[str, Any]) -> str:
    """The arch's family (an arch without one is a WRN: model.pt files written before the families)."""
    family = arch.get("family", "wrn")
    if family not in FAMILIES:
        raise UserError(f"network family '{family}' does not exist: choose one of {', '.join(FAMILIES)}")
    return family


def name_of(arch: dict) -> str:
    """How people write the network: WRN-16-1, ResNet-18, VGG-11, mobilenet_v2, my_pkg.MyNet."""
    family = family_of(arch)
    if family == "wrn":
        return f"WRN-{arch['depth']}-{arch['width']}"
    if family == "resnet":
        return f"ResNet-{arch['depth']}"
    if family == "vgg":
        return f"VGG-{arch['depth']}"
    return str(arch["name"] if family == "torchvision" else arch["target"])


def slug_of(arch: dict) -> str:
    """The network's part of a model-zoo file name: wrn-16-1, resnet-18, vgg-11, torchvision-mobilenet_v2,
    custom-my_pkg.MyNet (the conf/teacher files' default checkpoint, through `config_slug`)."""
    family = family_of(arch)
    if family == "wrn":
        return f"wrn-{arch['depth']}-{arch['width']}"
    if family in ("resnet", "vgg"):
        return f"{family}-{arch['depth']}"
    return f"{family}-{name_of(arch)}"


def entry_name(entry: dict | None) -> str | None:
    """A results.json student/teacher entry's network as people write it: the `name` it records
    (`name_of` when it was written), WRN-depth-width for entries written before the families existed;
    None for no entry (no teacher)."""
    if not entry:
        return None
    if entry.get("name"):
        return str(entry["name"])
    if entry.get("family", "wrn") == "wrn":
        return name_of(entry)
    return f"{entry['family']}-{entry.get('depth', '?')}"  # zskt never writes one: a label no WRN row shares


def config_slug(*, _parent_: DictConfig) -> str:
    """`${zskt_slug:}`: `slug_of` the network config node the interpolation sits in (a conf/teacher
    file's checkpoint). Only the node's arch keys are read: its checkpoint is what is being resolved."""
    family = family_of(_parent_)
    keys = [key for key in ARCH_KEYS[family] if key != "kwargs"]  # kwargs never enter a file name
    arch = {key: _parent_["_target_" if key == "target" else key] for key in keys}
    return slug_of({"family": family, **arch})
