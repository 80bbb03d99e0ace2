"""The teacher of a run: which checkpoint it is, how to train it when it is missing, and loading it
(`RunTeacher` does all three when the method asks for its teacher).

By default `teacher.checkpoint` is the model zoo's file for the configured network (`zskt.config.zoo_path`,
which `method=scratch` on full data publishes to). A student that starts from a checkpoint
(fine-tune, belief matching) brings the teacher its model.pt recorded, unless the user chose one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from zskt.checkpoints import load_model
from zskt.config import compose_config, zoo_path
from zskt.errors import UserError
from zskt.models.families import ARCH_KEYS, arch_from_config, checkpoint_expectation, family_of, network_info, slug_of
from zskt.models.size_and_layout import count_parameters
from zskt.rundir import TEACHER_SUBDIR
from zskt.validation import check_teacher

if TYPE_CHECKING:
    from zskt.data.datamodule import ImageDataModule

log_info = rank_zero_only(logging.getLogger("zskt").info)

# the user's overrides a teacher-training command repeats: where the data and the zoo are
_REPEATED_OVERRIDES = ("dataset.root=", "dataset.download=", "paths.")


def training_command(cfg: DictConfig) -> str:
    """The exact command that trains the configured teacher into the model zoo."""
    parts = ["python -m zskt.run method=scratch", f"dataset={cfg.dataset.name}", *network_overrides(cfg.teacher),
             f"seed={cfg.teacher.seed}"]
    if HydraConfig.initialized():
        parts += [o for o in HydraConfig.get().overrides.task if o.startswith(_REPEATED_OVERRIDES)
                  and not o.startswith("paths.output_dir=")]
    return " ".join(parts)


def network_overrides(teacher: DictConfig) -> list[str]:
    """The command-line overrides that make the student the teacher's network: student=resnet student.depth=34."""
    family = family_of(teacher)
    parts = [f"student={family}"]
    for key in ARCH_KEYS[family]:
        if key == "target":
            parts.append(f"student._target_={teacher._target_}")
        elif key == "kwargs":
            parts += [f"+student.kwargs.{k}={v}" for k, v in (teacher.get("kwargs") or {}).items()]
        else:
            parts.append(f"student.{key}={teacher[key]}")
    return parts


def expectation(role: str, configured: dict) -> dict:
    """What `role`'s checkpoint must hold: its class count and non-default family
    (`checkpoint_expectation`), and every network option the command line sets explicitly
    (`teacher.depth=28`, `student=resnet`): a file holding another network is then a one-line error
    naming what it holds, not silently taken over the option. Options left at their defaults yield
    to the file (a model.pt records its own network)."""
    expect = checkpoint_expectation(configured)
    if not HydraConfig.initialized():
        return expect
    from hydra.core.override_parser.overrides_parser import OverridesParser

    family = configured["family"]
    for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        key = override.key_or_group
        option = key[len(role) + 1:] if key.startswith(f"{role}.") else None
        option = "target" if option == "_target_" else option  # a custom network's class, as its arch names it
        if key == role:  # the config group: student=resnet names the family
            expect["family"] = family
        elif option in ARCH_KEYS[family] and option != "kwargs":
            expect[option] = configured[option]
    return expect


def choose_checkpoint(raw: DictConfig, cfg: DictConfig, student_meta: dict | None) -> str:
    """The teacher's checkpoint: the one the starting student's model.pt records when the user
    left teacher.checkpoint at its default (on resume the saved config already holds the choice),
    else teacher.checkpoint."""
    recorded = ((student_meta or {}).get("teacher") or {}).get("checkpoint")
    if not recorded or cfg.resume or not OmegaConf.is_interpolation(raw.teacher, "checkpoint"):
        return cfg.teacher.checkpoint
    if not Path(recorded).is_file():
        raise UserError(f"teacher {recorded}, recorded in {cfg.student.checkpoint}, does not exist: "
                        "pass teacher.checkpoint=PATH")
    return recorded


def zoo_checkpoint(cfg: DictConfig) -> str:
    """The model zoo's file for the configured teacher."""
    return zoo_path(cfg.paths.models, cfg.dataset.name, slug_of(arch_from_config(cfg.teacher, 0)), cfg.teacher.seed)


def needs_training(cfg: DictConfig) -> bool:
    """True when the teacher's checkpoint is missing and the run may train it (teacher.train_if_missing)."""
    return not Path(cfg.teacher.checkpoint).exists() and bool(cfg.teacher.train_if_missing)


def training_config(raw: DictConfig) -> DictConfig:
    """The config of a scratch run that trains `raw`'s teacher into the model zoo, in <run dir>/teacher:
    the same data, trainer and paths, the scratch method as Hydra composes it."""
    cfg = raw.copy()
    method = compose_config(["method=scratch"]).method
    method.budget_scale = raw.method.get("budget_scale", method.budget_scale)
    method.epochs = raw.teacher.get("epochs")
    cfg.method = method
    teacher_only = ("seed", "checkpoint", "train_if_missing", "epochs")
    cfg.student = {**{k: v for k, v in raw.teacher.items() if k not in teacher_only}, "checkpoint": None}
    cfg.dataset.m = None
    cfg.seed = raw.teacher.seed
    cfg.resume = False
    cfg.paths.output_dir = str(Path(raw.paths.output_dir) / TEACHER_SUBDIR)
    return cfg


def place_trained(cfg: DictConfig, trained: dict) -> None:
    """After the teacher's scratch run: a teacher.checkpoint outside the zoo gets a copy of its model.pt."""
    if not Path(cfg.teacher.checkpoint).is_file():
        Path(cfg.teacher.checkpoint).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(cfg.paths.output_dir) / TEACHER_SUBDIR / trained["model"], cfg.teacher.checkpoint)


def load_teacher(cfg: DictConfig, num_classes: int, student_meta: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The teacher network from teacher.checkpoint, and its description for results.json and model.pt.
    When that is the teacher the starting student's model.pt records, the recorded network is the
    one to build (a plain state dict does not say which network it is)."""
    path = Path(cfg.teacher.checkpoint)
    if not path.is_file():
        if str(path) == zoo_checkpoint(cfg):  # the zoo's file for this teacher: it can be trained there
            raise UserError(f"teacher checkpoint {path} does not exist: train it with `{training_command(cfg)}`, "
                            "pass teacher.checkpoint=PATH, or set teacher.train_if_missing=true")
        raise UserError(f"teacher checkpoint {path} does not exist: check the path (teacher.checkpoint), or leave it "
                        "at its default, the model zoo's file for teacher.*")
    configured = arch_from_config(cfg.teacher, num_classes)
    recorded = (student_meta or {}).get("teacher") or {}
    if recorded.get("checkpoint") == str(cfg.teacher.checkpoint) and recorded.get("family") in ARCH_KEYS:
        configured = arch_from_config(recorded, num_classes)
    model, meta = load_model(path, expect=expectation("teacher", configured), allow_unsafe=cfg.checkpoint.allow_unsafe,
                             family_arch=configured)
    # absolute: model.pt records it, and later runs (fine-tune, abm) may start elsewhere
    info = {**network_info(meta["arch"], count_parameters(model)), "num_classes": meta["arch"]["num_classes"],
            "checkpoint": str(path.resolve())}
    return model, info


class RunTeacher:
    """The teacher of one run, for `RunInputs.teacher`: nothing happens until a method asks for it.
    Then teacher.checkpoint is chosen (`choose_checkpoint`), trained first by `train` (the entry
    point's own run function, on `training_config`) where it is missing and teacher.train_if_missing
    allows, loaded, and refused if it cannot teach (`check_teacher`). `info` is its description for
    results.json, None while no method has asked."""

    def __init__(self, raw: DictConfig, cfg: DictConfig, datamodule: ImageDataModule, student_meta: dict | None,
                 train: Callable[[DictConfig], dict]) -> None:
        self.raw, self.cfg, self.datamodule, self.student_meta, self.train = raw, cfg, datamodule, student_meta, train
        self.network: torch.nn.Module | None = None
        self.info: dict | None = None

    def __call__(self) -> tuple[torch.nn.Module, dict]:
        """The teacher network and its description, made ready on the first call."""
        if self.network is None:
            cfg = self.cfg
            cfg.teacher.checkpoint = choose_checkpoint(self.raw, cfg, self.student_meta)
            if needs_training(cfg):
                log_info(f"teacher {cfg.teacher.checkpoint} is missing; training it first ({training_command(cfg)})")
                place_trained(cfg, self.train(training_config(self.raw)))
                # the teacher's run seeded the global streams with its own seed
                pl.seed_everything(cfg.seed, workers=True, verbose=False)
            network, described = load_teacher(cfg, self.datamodule.num_classes, self.student_meta)
            check_teacher(network, self.datamodule.test_inputs, cfg.teacher.checkpoint)
            self.network, self.info = network, described
        return self.network, self.info
