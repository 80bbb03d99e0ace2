"""The method module of a run, built from its config: the student (with student.checkpoint's weights
when one is set) and what the method's class asks of the run (`StudentModule.run_kwargs`: the
teacher, M, attention points, the dataset's normalisation). The run itself never asks which method
it builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from zskt import teachers
from zskt.checkpoints import load_model
from zskt.config import instantiate_node
from zskt.methods.base import RunInputs, StudentModule
from zskt.models import families

if TYPE_CHECKING:
    from zskt.data.datamodule import ImageDataModule


def starting_student(cfg: DictConfig, num_classes: int) -> tuple[dict, torch.nn.Module | None, dict | None]:
    """The student's arch, and with student.checkpoint the network it starts from and that file's
    description (which records the arch, and the teacher it was trained with)."""
    arch = families.arch_from_config(cfg.student, num_classes)
    if not cfg.student.get("checkpoint"):
        return arch, None, None
    initial, meta = load_model(cfg.student.checkpoint, expect=teachers.expectation("student", arch),
                               allow_unsafe=cfg.checkpoint.allow_unsafe, family_arch=arch)
    return meta["arch"], initial, meta


def build_method(raw: DictConfig, cfg: DictConfig, method_cls: type[StudentModule], datamodule: ImageDataModule,
                 train: Callable[[DictConfig], dict]) -> tuple[StudentModule, teachers.RunTeacher]:
    """The run's method module, and its teacher (`info` None where the method took none). `train`
    runs a config to its results: the entry point's own run function, which trains a missing teacher."""
    arch, initial, initial_meta = starting_student(cfg, datamodule.num_classes)
    teacher = teachers.RunTeacher(raw, cfg, datamodule, initial_meta, train)
    kwargs = method_cls.run_kwargs(RunInputs(cfg, datamodule, arch, teacher))
    module = instantiate_node(cfg.method, "method", student=arch, channels_last=cfg.channels_last,
                              compile=cfg.compile, **kwargs)
    if initial is not None:
        module.student.load_state_dict(initial.state_dict())
    return module, teacher
