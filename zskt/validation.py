"""Every numeric and on/off option of the run's config, and the rule it obeys, in one table.

`validate_config` checks a whole resolved config before anything is built (a wrong type, or a
zero or negative value where that is meaningless, is a one-line `UserError` naming the option);
the constructors call `check` with the same table for the options they are given, so scripts
that build a module directly get the same answer. Every path option must name the kind of thing it
should (`check_paths`). `check_teacher` refuses a teacher that cannot
teach (non-finite weights or outputs) before any training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from zskt.errors import UserError
from zskt.models import families

SEED_MAX = 2**32 - 1  # what seed_everything accepts (outside it, Lightning picks a random seed)
PROBE_IMAGES = 64  # test images a teacher must classify with finite outputs before it may teach


@dataclass(frozen=True)
class Number:
    """A number, or an integer when `integer`, in the range `low`..`high` (`None`: unbounded;
    `open_low`/`open_high`: the bound itself excluded); `None` allowed when `optional`."""

    what: str
    integer: bool = False
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    optional: bool = False

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float) if not self.integer else int):
            return False
        if math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.open_high and value == self.high))


@dataclass(frozen=True)
class Flag:
    """true or false (not 1, 0 or 'yes')."""

    what: str = "true or false"

    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class ListOf:
    """A list of values each obeying `item` (of `length` values when given); `None` when `optional`."""

    item: Number
    what: str
    length: int | None = None
    optional: bool = False

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            return False
        return (self.length is None or len(value) == self.length) and all(self.item.ok(v) for v in value)


@dataclass(frozen=True)
class MapOf:
    """A mapping (name -> value) whose values obey `item`."""

    item: Number
    what: str

    def ok(self, value: Any) -> bool:
        return isinstance(value, Mapping) and all(self.item.ok(v) for v in value.values())


@dataclass(frozen=True)
class Custom:
    """A value a dedicated parser checks (it raises the one-line `UserError` itself)."""

    parse: Any
    what: str = ""

    def ok(self, value: Any) -> bool:
        self.parse(value)
        return True


POSITIVE_INT = Number("a positive integer", integer=True, low=1)
NON_NEGATIVE_INT = Number("an integer >= 0", integer=True, low=0)
POSITIVE = Number("a positive number", low=0, open_low=True)
NON_NEGATIVE = Number("a number >= 0", low=0)
FRACTION = Number("a number from 0 to 1", low=0, high=1)
OPEN_FRACTION = Number("a number strictly between 0 and 1", low=0, high=1, open_low=True, open_high=True)
SEED = Number(f"an integer from 0 to {SEED_MAX}", integer=True, low=0, high=SEED_MAX)
FLAG = Flag()


def parse_m(m: Any) -> int | None:
    """Normalise the `dataset.m` config value: None/'all' -> None (full set), else a positive int."""
    if m is None or (isinstance(m, str) and m.strip().lower() in {"all", "full", "null", "none"}):
        return None
    if isinstance(m, bool) or not isinstance(m, (int, str)):
        raise UserError(f"dataset.m={m!r} is invalid: use a positive integer (images per class) or 'all'")
    if isinstance(m, str):
        if not m.strip().isdigit():
            raise UserError(f"dataset.m={m!r} is invalid: use a positive integer (images per class) or 'all'")
        m = int(m)
    if m < 1:
        raise UserError(f"dataset.m={m} is invalid: use a positive integer (images per class) or 'all'")
    return m


# Every numeric or on/off option of conf/method/*.yaml, conf/dataset/*.yaml and the top level,
# by section. tests/test_validation.py walks the config files and fails on an option missing here.
RULES: dict[str, dict[str, Any]] = {
    "": {"seed": SEED, "resume": FLAG, "overwrite_zoo": FLAG, "channels_last": FLAG, "compile": FLAG, "tf32": FLAG},
    "checkpoint": {"allow_unsafe": FLAG},
    "teacher": {"seed": SEED, "train_if_missing": FLAG,
                "epochs": Number("a positive integer or null", integer=True, low=1, optional=True)},
    "method": {
        # training length and evaluation
        "epochs": Number("a positive integer or null (the recipe)", integer=True, low=1, optional=True),
        "full_epochs": POSITIVE_INT,
        "reference_m": POSITIVE_INT,
        "iterations": POSITIVE_INT,
        "budget_scale": Number("a positive number (1.0 = the paper's budget)", low=0, open_low=True),
        "evaluations": POSITIVE_INT,
        "eval_every": Number("a positive integer, or null (a tenth of the run, at most 1,000)", integer=True, low=1,
                             optional=True),
        # zero-shot
        "batch_size": POSITIVE_INT,
        "n_generator_steps": POSITIVE_INT,
        "n_student_steps": POSITIVE_INT,
        "student_lr": POSITIVE,
        "generator_lr": POSITIVE,
        "grad_clip": POSITIVE,
        "noise_seed": SEED,
        "collapse_class_share": Number("a number above 0 and at most 1, or null (never warn)", low=0, high=1, open_low=True,
                                    optional=True),
        "restart_after": Number("a positive integer, or null (never restart)", integer=True, low=1, optional=True),
        "restart_class_share": Number("a number above 0 and at most 1", low=0, high=1, open_low=True),
        "generator": {"z_dim": POSITIVE_INT, "hidden": POSITIVE_INT, "negative_slope": NON_NEGATIVE},
        # the data-free methods (dfq, deepinversion, fast)
        "epoch_steps": POSITIVE_INT,
        "kd_steps": POSITIVE_INT,
        "lr_min": NON_NEGATIVE,
        "generator_betas": ListOf(Number("", low=0, high=1, open_high=True), "two numbers from 0 up to (not including) 1",
                                  length=2),
        "synthesis_betas": ListOf(Number("", low=0, high=1, open_high=True), "two numbers from 0 up to (not including) 1",
                                  length=2),
        "bn_weight": NON_NEGATIVE,
        "oh_weight": NON_NEGATIVE,
        "adv_weight": NON_NEGATIVE,
        "balance_weight": NON_NEGATIVE,
        "tv_weight": NON_NEGATIVE,
        "l2_weight": NON_NEGATIVE,
        "sample_in_eval_mode": FLAG,
        "synthesis_steps": POSITIVE_INT,
        "synthesis_lr": POSITIVE,
        "latent_lr": POSITIVE,
        "meta_lr": Number("a positive number, or null (synthesis_steps * generator_lr)", low=0, open_low=True,
                          optional=True),
        "reptile_scale": POSITIVE,
        "bn_momentum": Number("a number from 0 up to (not including) 1, or null (no moving average)", low=0, high=1,
                              open_high=True, optional=True),
        "warmup_epochs": NON_NEGATIVE_INT,
        "reset_after": Number("an integer >= 0, or null (never)", integer=True, low=0, optional=True),
        "jitter": NON_NEGATIVE_INT,
        "crop_padding": NON_NEGATIVE_INT,
        "adv_temperature": POSITIVE,
        "js_clamp": ListOf(Number("", low=0, high=1), "two numbers from 0 to 1 (low, high)", length=2),
        # SGD and Adam recipes
        "lr": POSITIVE,
        "momentum": Number("a number from 0 up to (not including) 1", low=0, high=1, open_high=True),
        "nesterov": FLAG,
        "weight_decay": NON_NEGATIVE,
        "milestones": ListOf(Number("", low=0, high=1, open_low=True), "a list of fractions of the run in (0, 1]"),
        "gamma": POSITIVE,
        # losses
        "alpha": FRACTION,
        "temperature": POSITIVE,
        "beta": NON_NEGATIVE,
        "anchor_weight": NON_NEGATIVE,
        # belief matching
        "k": POSITIVE_INT,
        "xi": Number("a positive step size", low=0, open_low=True),
        "n_images": Number("an integer >= 2", integer=True, low=2),
        "seed": SEED,
        "batch_images": POSITIVE_INT,
        "plot_k": NON_NEGATIVE_INT,
    },
    "recipe": {"scratch_epochs": POSITIVE_INT, "finetune_epochs": POSITIVE_INT, "zero_shot_iterations": POSITIVE_INT,
               "reference_m": POSITIVE_INT},
    "callbacks": {
        "divergence_guard": {"check_every_n_steps": POSITIVE_INT},
        "generator_samples": {"n_samples": POSITIVE_INT, "nrow": POSITIVE_INT, "seed": SEED},
        "progress_bar": {"refresh_rate": NON_NEGATIVE_INT},
    },
    "dataset": {
        "m": Custom(parse_m),
        "batch_size": POSITIVE_INT,
        "eval_batch_size": POSITIVE_INT,
        "num_workers": NON_NEGATIVE_INT,
        "subset_seed": SEED,
        "split_seed": SEED,
        "test_fraction": OPEN_FRACTION,
        "crop_padding": NON_NEGATIVE_INT,
        "mean": ListOf(FRACTION, "3 numbers from 0 to 1 (one per channel), or null", length=3, optional=True),
        "std": ListOf(POSITIVE, "3 positive numbers (one per channel), or null", length=3, optional=True),
        "download": FLAG,
        "augment": FLAG,
        "resize": FLAG,
    },
}


def _rule(key: str) -> Any:
    """The rule of a dotted option name ('method.lr', 'method.generator.z_dim', 'seed')."""
    section, _, rest = key.partition(".")
    node: Any = RULES[section] if rest and section in RULES else RULES[""]
    for part in (rest or key).split("."):
        node = node[part]
    return node


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(key: str, value: Any) -> None:
    """Refuse `value` for the option `key` (dotted, as on the command line) unless its rule allows it."""
    rule = _rule(key)
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(rule, MapOf) and isinstance(value, Mapping):  # name the entry that is wrong
        for name, entry in value.items():
            if not rule.item.ok(entry):
                raise UserError(f"{key}.{name}={_shown(entry)} is invalid: use {rule.item.what}")
    if not rule.ok(value):
        raise UserError(f"{key}={_shown(value)} is invalid: use {rule.what}")


def _check_node(prefix: str, rules: dict[str, Any], node: Any) -> None:
    if not isinstance(node, (Mapping, DictConfig)):
        return
    for name, rule in rules.items():
        if name not in node:
            continue
        key = f"{prefix}{name}"
        if isinstance(rule, dict):
            _check_node(f"{key}.", rule, node[name])
        else:
            check(key, node[name])


def validate_config(cfg: DictConfig) -> None:
    """Check every option of the (resolved) run config against `RULES`, then the ones that
    depend on each other; the first bad one is a one-line `UserError`."""
    for section, rules in RULES.items():
        if section == "":
            _check_node("", rules, cfg)
        elif section in cfg:
            _check_node(f"{section}.", rules, cfg[section])
    for role in ("student", "teacher"):
        if isinstance(cfg.get(role), (Mapping, DictConfig)):
            families.check_config(cfg[role], role)
    method = cfg.get("method") or {}
    iterations, eval_every = method.get("iterations"), method.get("eval_every")
    if isinstance(iterations, int) and isinstance(eval_every, int) and eval_every > iterations:
        raise UserError(f"method.eval_every={eval_every} is larger than the run (method.iterations={iterations}): "
                        f"use method.eval_every <= {iterations}")
    check_paths(cfg)
    if method.get("nesterov") is True and method.get("momentum") == 0:
        raise UserError("method.momentum=0 with method.nesterov=true: Nesterov needs a positive momentum "
                        "(or set method.nesterov=false)")


# ---------------------------------------------------------------------------- path options
# Every path option of the run's config and the kind of thing it names: a folder the run reads or
# writes under, or a checkpoint file. (paths.output_dir: `zskt.results.check_output_dir`; the run dir
# Hydra makes: `zskt.rundir.HydraRunDir`.)
PATH_OPTIONS = {"paths.outputs": "folder", "paths.data": "folder", "paths.models": "folder", "paths.cache": "folder",
                "dataset.root": "folder", "dataset.cache_dir": "folder",
                "student.checkpoint": "file", "teacher.checkpoint": "file"}


def wrong_kind(path: str | os.PathLike, kind: str) -> str | None:
    """Why `path` cannot be the `kind` ("folder" or "file") it should be, where it or a parent exists
    as the other kind; None when it can (including: it does not exist yet)."""
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        return "is a file, not a folder"
    if kind == "file" and path.is_dir():
        return "is a folder, not a file"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"cannot exist: {parent} is a file, not a folder"
    return None


def check_paths(cfg: DictConfig) -> None:
    """Refuse a path option that names the wrong kind of thing (a file where a folder belongs, or
    the reverse), before anything is read or written."""
    for key, kind in PATH_OPTIONS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value or value == "<memory>":
            continue
        if (problem := wrong_kind(value, kind)) is not None:
            what = "a folder" if kind == "folder" else "a checkpoint file"
            raise UserError(f"{key}={value} {problem}: pass {what} there")


# ---------------------------------------------------------------------------- the teacher
@torch.no_grad()
def check_teacher(teacher: nn.Module, images: torch.Tensor, path: str) -> None:
    """Refuse a teacher with non-finite weights or buffers, or non-finite outputs on the first
    `PROBE_IMAGES` of `images` (normalised test images), before any training: it would teach NaN."""
    bad = [name for name, t in [*teacher.named_parameters(), *teacher.named_buffers()]
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"teacher {path} has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): it cannot "
                        "teach; retrain it or pass another teacher.checkpoint")
    was_training = teacher.training
    teacher.eval()
    logits = teacher(images[:PROBE_IMAGES].to(next(teacher.parameters()).device, torch.float32))
    teacher.train(was_training)
    if not torch.isfinite(logits).all():
        raise UserError(f"teacher {path} gives non-finite outputs on test images (its BN statistics or weights are "
                        "damaged): it cannot teach; retrain it or pass another teacher.checkpoint")
