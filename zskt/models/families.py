"""Network families: build any supported classifier from a plain description (its `arch`).

An arch is a dict of plain values, recorded in model.pt and the run's hyperparameters:

- `{"family": "wrn", "depth", "width", "num_classes"}`: the pre-activation Wide ResNet;
- `{"family": "resnet", "depth", "num_classes"}`: the CIFAR ResNets (zskt.models.resnet);
- `{"family": "vgg", "depth", "num_classes"}`: VGG-BN with a CIFAR head (zskt.models.vgg);
- `{"family": "torchvision", "name", "kwargs", "num_classes"}`: any torchvision classification
  builder (`torchvision.models.get_model`), untrained, at the data's resolution;
- `{"family": "custom", "target", "kwargs", "num_classes"}`: any importable `nn.Module` class,
  built with `hydra.utils.instantiate` (given `num_classes` when its constructor takes it).

An arch without `family` is a WRN (model.pt files written before the families existed). Its family,
name and model-zoo name: `zskt.network_names` (torch-free; re-exported here).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torchvision
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zskt.errors import UserError
from zskt.models import resnet, vgg
from zskt.models.wide_resnet import WideResNet, blocks_per_group
from zskt.network_names import ARCH_KEYS, FAMILIES, family_of, name_of, slug_of  # noqa: F401 - re-exported

def arch_from_config(node: DictConfig | dict, num_classes: int) -> dict:
    """The arch a `student` or `teacher` config node describes, for `num_classes` classes; an arch or a
    network recorded in results.json / model.pt (a custom class as `target`) reads the same way."""
    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    family = family_of(node)
    values = {key: node.get(key) for key in ARCH_KEYS[family] if key != "target"}
    if family == "custom":
        values["target"] = node.get("_target_", node.get("target"))
    if "kwargs" in values:
        values["kwargs"] = dict(values["kwargs"] or {})
    return {"family": family, **values, "num_classes": num_classes}


def network_info(arch: dict, params: int) -> dict:
    """A network in results.json: its arch (without the class count), its name and its size."""
    return {**{k: v for k, v in arch.items() if k != "num_classes"}, "name": name_of(arch), "params": params}


def _torchvision_builder(name: Any) -> None:
    classifiers = torchvision.models.list_models(module=torchvision.models)
    if name not in classifiers:
        close = [c for c in classifiers if str(name).lower()[:4] in c][:6] or classifiers[:6]
        raise UserError(f"torchvision has no classification model '{name}': pick one of "
                        f"torchvision.models.list_models() (e.g. {', '.join(close)})")


def _torchvision(name: Any, kwargs: dict, num_classes: int) -> nn.Module:
    _torchvision_builder(name)
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"torchvision model {name} cannot be built with kwargs {kwargs} ({err}): "
                        "fix teacher.kwargs / student.kwargs") from None


def _custom_class(target: Any) -> type:
    if not target or not isinstance(target, str) or target == "???":
        raise UserError("the custom network needs its class: set _target_=my_pkg.MyNet on the student or teacher")
    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # get_class also logs the failure to the console: the one line says it
    try:
        cls = get_class(target)
    except Exception as err:  # noqa: BLE001 - Hydra wraps every import failure in its own exception
        # its first line is "Error loading 'x':"; the cause (No module named 'my_pkg') follows
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        cause = " ".join(lines[1:] or lines)[:200]
        raise UserError(f"custom network {target} does not import ({cause}): "
                        "check the module path and that it is installed or on PYTHONPATH") from None
    finally:
        hydra_log.setLevel(level)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"custom network {target} is not an nn.Module class: point _target_ at one")
    return cls


def _custom(target: Any, kwargs: dict, num_classes: int) -> nn.Module:
    cls = _custom_class(target)
    try:
        takes_classes = "num_classes" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_classes = False
    config = {"_target_": target, **kwargs}
    if takes_classes and "num_classes" not in kwargs:
        config["num_classes"] = num_classes
    try:
        return instantiate(config, _convert_="all")
    except Exception as err:  # noqa: BLE001 - any constructor failure of the user's class
        cause = err.__cause__ or err
        raise UserError(f"custom network {target} could not be built with kwargs {kwargs} "
                        f"({str(cause).splitlines()[0][:160]}): fix its kwargs") from None


def build_network(arch: dict) -> nn.Module:
    """A freshly initialised network of this arch (a one-line `UserError` for one that cannot exist)."""
    family, num_classes = family_of(arch), arch["num_classes"]
    if family == "wrn":
        return WideResNet(arch["depth"], arch["width"], num_classes)
    if family == "resnet":
        return resnet.cifar_resnet(arch["depth"], num_classes)
    if family == "vgg":
        return vgg.CifarVGG(arch["depth"], num_classes)
    if family == "torchvision":
        return _torchvision(arch["name"], dict(arch.get("kwargs") or {}), num_classes)
    return _custom(arch["target"], dict(arch.get("kwargs") or {}), num_classes)


def default_attention_layers(arch: dict) -> list[str] | None:
    """The family's attention points (module names), or None where the family has no fixed layout
    (torchvision, custom: the user names them)."""
    family = family_of(arch)
    if family == "wrn":
        return ["block1", "block2", "block3"]
    if family == "resnet":
        return resnet.attention_layers(arch["depth"])
    if family == "vgg":
        return vgg.attention_layers(arch["depth"])
    return None


def checkpoint_expectation(configured: dict) -> dict:
    """What a checkpoint must hold for a network config: its class count, and its family when the
    config names one other than the default WRN (a model.pt records its own network, so a file of
    any family loads under the default config without flags)."""
    expect = {"num_classes": configured["num_classes"]}
    if configured["family"] != "wrn":
        expect["family"] = configured["family"]
    return expect


def attention_layers(node: DictConfig | dict, arch: dict) -> list[str] | None:
    """A network's attention points: its config's `attention_layers`, else its family's default."""
    configured = node.get("attention_layers")
    return list(configured) if configured else default_attention_layers(arch)


def check_config(node: DictConfig | dict, role: str) -> None:
    """One line for a network that cannot exist (family, depth, width, torchvision name, custom class),
    before anything is loaded or written; building it costs nothing more than that."""
    family = node.get("family", "wrn")
    if family not in FAMILIES:
        raise UserError(f"{role}.family={family} does not exist: choose {role}= one of {', '.join(FAMILIES)}")
    try:
        if family == "wrn":
            blocks_per_group(node.get("depth"))
            WideResNet.check_width(node.get("width"))
        elif family == "resnet":
            resnet.check_depth(node.get("depth"))
        elif family == "vgg":
            vgg.check_depth(node.get("depth"))
        elif family == "torchvision":
            _torchvision_builder(node.get("name"))
        else:
            _custom_class(node.get("_target_"))
    except UserError as err:
        raise UserError(f"{role}: {err}") from None
