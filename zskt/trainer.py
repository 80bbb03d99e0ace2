"""The Lightning Trainer of a run, built from its config: the method's budget sets its length and
evaluation period, the run's length its logging period, and a logger or trainer option this machine
or this install cannot honour is one line that says what to change."""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from zskt.config import instantiate_node
from zskt.errors import UserError

LOG_POINTS = 50  # a run's loss curves get this many points, where it is that many batches long
LOGGER_PACKAGES = {"MLFlowLogger": "mlflow-skinny", "WandbLogger": "wandb"}  # what `pip install` brings each


def logging_period(steps: int) -> int:
    """trainer.log_every_n_steps when the config leaves it null: every `LOG_POINTS`-th of the run, at
    most every 50 steps (Lightning's default) and at least every step, so a 20-iteration run and a
    30-batch few-shot run each get a curve."""
    return max(1, min(50, steps // LOG_POINTS))


def build_loggers(node: DictConfig) -> list:
    """The run's Lightning loggers: one logger config (`_target_`), or several by name (logger=many);
    a logger whose package is not installed is one line saying which to install."""
    nodes = [("logger", node)] if "_target_" in node else [(f"logger.{name}", child) for name, child in node.items()]
    loggers = []
    for what, child in nodes:
        try:
            loggers.append(instantiate_node(child, what))
        except Exception as err:  # Hydra wraps the constructor's (or the import's) failure
            cause = err.__cause__ or err
            if not isinstance(cause, ImportError):
                raise
            package = LOGGER_PACKAGES.get(str(child.get("_target_")).rsplit(".", 1)[-1], "the package it needs")
            # Hydra's import errors read "Error loading 'x':" and then the cause
            lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
            detail = " ".join(lines[1:] or lines)[:200] or type(cause).__name__
            raise UserError(f"{what} {child.get('_target_')} cannot start ({detail}): pip install {package}, or "
                            "choose another logger=") from None
    return loggers


def build_trainer(cfg: DictConfig, module: pl.LightningModule, extra_callbacks: Sequence[pl.Callback] = (),
                  steps: int = 1) -> pl.Trainer:
    """The configured Trainer, with the length and evaluation period the method's budget sets, and the
    logging period of a run `steps` batches long unless trainer.log_every_n_steps is set."""
    kwargs = module.trainer_kwargs()
    if cfg.trainer.get("log_every_n_steps") is None:
        kwargs["log_every_n_steps"] = logging_period(steps)
    callbacks = []
    for key, node in cfg.callbacks.items():
        every = {"every_n_epochs": kwargs["check_val_every_n_epoch"]} if key == "model_checkpoint" and node.get(
            "every_n_epochs") is None else {}
        callbacks.append(instantiate_node(node, f"callbacks.{key}", **every))
    try:
        return instantiate_node(cfg.trainer, "trainer", logger=build_loggers(cfg.logger),
                                callbacks=[*callbacks, *extra_callbacks], default_root_dir=cfg.paths.output_dir,
                                **kwargs)
    except UserError:
        raise
    except Exception as err:  # Lightning's checks of accelerator, devices, strategy and precision
        cause = err.__cause__ or err
        if not isinstance(cause, (MisconfigurationException, ValueError, RuntimeError)):
            raise
        first = str(cause).strip().splitlines()[0][:200]
        raise UserError(f"the trainer cannot start ({first}): fix trainer.accelerator / trainer.devices / "
                        "trainer.strategy / trainer.precision for this machine") from None
