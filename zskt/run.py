"""The one entry point: `python -m zskt.run method=... dataset=... key=value`.

It only wires: compose (Hydra) -> check -> build the parts (data, teacher, method, trainer) ->
fit / test -> hand the results on (`zskt.results`). Mistakes a user can fix end as one line on
stderr and exit status 2.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait (libgomp's default) lose their cores on a machine shared
# with other jobs: the demo's student phase sat at 0/200 for a minute. Passive waiting costs little
# on an idle machine. OpenMP reads the variable when torch loads it, so this comes before any import
# of torch; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# logger=mlflow writes MLflow's file store into the run dir (no server), which MLflow 3 keeps behind this switch
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

import logging  # noqa: E402 - after the OpenMP default above
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig
from pytorch_lightning.callbacks import OnExceptionCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from zskt import results, teachers
from zskt.callbacks import Diverged, WallTime
from zskt.checkpoints import load_model
from zskt.config import check_overrides, instantiate_node, is_multirun, resolve_config
from zskt.errors import UserError
from zskt.hardware import set_tf32
from zskt.models import families
from zskt.rundir import (check_resume, disk_full, disk_full_message, lock_run_dir, releases_run_dir_locks,
                         remove_refused_run_dir)
from zskt.sweep import log_final_hparams
from zskt.validation import check_teacher, validate_config

log = logging.getLogger("zskt")
info = rank_zero_only(log.info)

# Lightning notices that are expected here and would only alarm users:
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")  # zero-shot iterations
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")  # frozen teachers
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")  # tiny few-shot epochs
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec\)` is deprecated")  # Lightning's, not ours
# with an OnExceptionCheckpoint, Lightning turns a fresh fit's ckpt_path=None into "last" and warns
# twice when (as in a fresh run dir, which `results.check_fresh` ensures) there is none
warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
# litlogger's advert; and Lightning's note on Ctrl-C, which `fit` replaces with the line that resumes the run
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage() and "Detected KeyboardInterrupt" not in record.getMessage())
# the run's own last line says it completed; "max_epochs=2 reached" means nothing for a run in iterations
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "`Trainer.fit` stopped: `max_epochs=" not in record.getMessage())
# resume=true from interrupted.ckpt (a run stopped before its first evaluation) restarts the epoch's loader on purpose
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
# callbacks.on_exception saves a full (resumable) checkpoint on purpose: Lightning's note on its default is noise
logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").addFilter(
    lambda record: "`weights_only` was not set" not in record.getMessage())


def training_steps(module: pl.LightningModule, datamodule) -> int:
    """The training batches of the whole run: its iterations, or its epochs times the loader's length."""
    if hasattr(module, "total_iterations"):
        return module.total_iterations
    if not (type(module).trains and module.uses_train_data):
        return 1
    return getattr(module, "max_epochs", 1) * len(datamodule.train_dataloader())


LOG_POINTS = 50  # a run's loss curves get this many points, where it is that many batches long


def logging_period(steps: int) -> int:
    """trainer.log_every_n_steps when the config leaves it null: every `LOG_POINTS`-th of the run, at
    most every 50 steps (Lightning's default) and at least every step, so a 20-iteration run and a
    30-batch few-shot run each get a curve."""
    return max(1, min(50, steps // LOG_POINTS))


LOGGER_PACKAGES = {"MLFlowLogger": "mlflow-skinny", "WandbLogger": "wandb"}  # what `pip install` brings each


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


def build_trainer(cfg: DictConfig, module: pl.LightningModule, extra_callbacks=(), steps: int = 1) -> pl.Trainer:
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


@releases_run_dir_locks
def execute(raw: DictConfig, callbacks=()) -> dict:
    """Run one configured job and return its results (also written to results.json).
    `callbacks`: extra Lightning callbacks for this run's Trainer (not for a teacher it trains)."""
    wall = WallTime(time.perf_counter())
    cfg = resolve_config(raw)
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    results.check_output_dir(cfg)
    lock_run_dir(output_dir)  # one run per dir: held until execute returns; the kernel drops it if the process dies
    results.check_fresh(cfg)
    if cfg.resume and (done := results.completed_run(output_dir)) is not None:
        info(f"{output_dir} already completed (test accuracy {done.get('test_acc')}%); nothing to resume")
        return done

    # the parts: data, the student's starting weights, the teacher, the method, the trainer
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    set_tf32(cfg.tf32)
    method_cls = get_class(cfg.method._target_)
    datamodule = instantiate_node(cfg.dataset, "dataset")
    datamodule.prepare_data()  # here, not by the Trainer: the class count sizes the networks before it exists
    datamodule.setup("fit")
    if cfg.resume:  # what the run reads back from its dir, before it writes anything there
        check_resume(output_dir, datamodule.indices, method_cls.trains, cfg.checkpoint.allow_unsafe)
    num_classes = datamodule.num_classes
    initial, initial_meta = None, None
    arch = families.arch_from_config(cfg.student, num_classes)
    if cfg.student.get("checkpoint"):
        initial, initial_meta = load_model(cfg.student.checkpoint, expect=teachers.expectation("student", arch),
                                           allow_unsafe=cfg.checkpoint.allow_unsafe, family_arch=arch)
        arch = initial_meta["arch"]
    parts, teacher_info = {}, None
    if method_cls.trains and method_cls.uses_train_data:
        parts["m"] = datamodule.m
    if method_cls.needs_teacher:
        cfg.teacher.checkpoint = teachers.choose_checkpoint(raw, cfg, initial_meta)
        if teachers.needs_training(cfg):
            info(f"teacher {cfg.teacher.checkpoint} is missing; training it first ({teachers.training_command(cfg)})")
            teachers.place_trained(cfg, execute(teachers.training_config(raw)))
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
        parts["teacher"], teacher_info = teachers.load_teacher(cfg, num_classes, initial_meta)
        check_teacher(parts["teacher"], datamodule.test_inputs, cfg.teacher.checkpoint)
    if method_cls.uses_attention:
        parts["attention_layers"] = {"student": families.attention_layers(cfg.student, arch),
                                     "teacher": families.attention_layers(cfg.teacher, teacher_info)}
    if method_cls.uses_normalization:  # a method that synthesises images in [0, 1]: the dataset's constants
        parts["normalization"] = {"mean": list(datamodule.mean), "std": list(datamodule.std)}
    module = instantiate_node(cfg.method, "method", student=arch, channels_last=cfg.channels_last,
                              compile=cfg.compile, **parts)
    if initial is not None:
        module.student.load_state_dict(initial.state_dict())
    trainer = build_trainer(cfg, module, [*callbacks, wall], training_steps(module, datamodule))

    # every input is checked: from here on the run writes its outputs
    if trainer.is_global_zero:
        results.write_start(cfg, output_dir, datamodule)
    if method_cls.trains:
        diverged = fit(cfg, trainer, module, datamodule, wall)
        if diverged is not None:
            return diverged
    tested = trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False)[0]

    done = results.collect(cfg, module, trainer, datamodule, tested, teacher_info, wall.seconds())
    if trainer.is_global_zero:
        if method_cls.trains:
            results.save_student(cfg, output_dir, module, datamodule, teacher_info, done)
        log_final_hparams(trainer, cfg, done)
        results.write_results(done, output_dir, trainer.loggers)
    return done


def resume_checkpoint(cfg: DictConfig, trainer: pl.Trainer) -> str | None:
    """The checkpoint a `resume=true` run continues from: the last evaluation's, or when the run died
    before its first evaluation, the one `callbacks.on_exception` saved as it died."""
    if not cfg.resume:
        return None
    last = Path(trainer.checkpoint_callback.format_checkpoint_name({})) if trainer.checkpoint_callback else None
    interrupted = [Path(c.ckpt_path) for c in trainer.callbacks if isinstance(c, OnExceptionCheckpoint)]
    for path in [last, *interrupted]:
        if path is not None and path.is_file():
            return str(path)
    if is_multirun():  # a sweep's job that never started: it runs from the beginning
        return None
    raise UserError(f"resume=true but {last or 'no checkpoint (callbacks.model_checkpoint is off)'} does not "
                    "exist: the run never reached its first checkpoint; start it again")


def fit(cfg: DictConfig, trainer: pl.Trainer, module: pl.LightningModule, datamodule, wall: WallTime) -> dict | None:
    """Train (on resume=true from the checkpoint `resume_checkpoint` finds); the results of a diverged
    run in a sweep (a single diverged run exits 1, SIGTERM 143 and Ctrl-C 130, each with a line that
    says what to do)."""
    output_dir = Path(cfg.paths.output_dir)
    last = Path(trainer.checkpoint_callback.format_checkpoint_name({})) if trainer.checkpoint_callback else None
    ckpt_path = resume_checkpoint(cfg, trainer)
    if ckpt_path is None and module.measures_start:
        module.record_start(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    try:
        if module.uses_train_data:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        else:
            trainer.fit(module, val_dataloaders=datamodule.val_dataloader(), ckpt_path=ckpt_path)
    except Diverged as err:
        done = results.record_divergence(cfg, output_dir, str(err), last, wall.seconds())
        print(f"zskt: {cfg.method.name} diverged: {err}; the last good checkpoint is {last}", file=sys.stderr)
        if not is_multirun():
            sys.exit(1)
        return done
    except SystemExit as stop:
        # SIGTERM: Lightning stopped at the end of a batch (SIGTERMException). Ctrl-C: Lightning caught the
        # KeyboardInterrupt, marked the trainer interrupted and exits 1. Either way an OnExceptionCheckpoint
        # (callbacks.on_exception) saved the moment
        sigterm = isinstance(stop, SIGTERMException)
        if not sigterm and not (trainer.interrupted and stop.code == 1):
            raise
        print(f"zskt: {stopped_line(trainer, module, 'SIGTERM' if sigterm else 'Ctrl-C', last, output_dir)}",
              file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if sigterm else signal.SIGINT))
    return None


def stopped_line(trainer: pl.Trainer, module: pl.LightningModule, by: str, last: Path | None, output_dir: Path) -> str:
    """What a stopped run says: where it stopped (in iterations for a run budgeted in them), what was
    saved, and the command that resumes it."""
    where = (f"iteration {module.iteration}" if hasattr(module, "total_iterations")
             else f"epoch {trainer.current_epoch + 1}, step {trainer.global_step}")
    saved = [Path(c.ckpt_path) for c in trainer.callbacks if isinstance(c, OnExceptionCheckpoint)]
    moment = "".join(f"the moment is saved in {path}; " for path in saved if path.is_file())
    source = (f"from the last evaluation's checkpoint, {last}" if last is not None and last.is_file()
              else f"from {saved[0]}: the run had not reached its first evaluation" if moment
              else "from the beginning: nothing was saved")
    return (f"stopped by {by} at {where}: {moment}resume with `python -m zskt.run hydra.run.dir={output_dir} "
            f"resume=true` ({source})")


def output_dir_of(cfg: DictConfig) -> str:
    """The run's output dir as the command gave it (the one Hydra created)."""
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - a config that does not resolve: the dir Hydra made
        return HydraConfig.get().runtime.output_dir


def run(cfg: DictConfig) -> dict:
    """`execute` with user errors reported as one line and exit status 2."""
    try:
        return execute(cfg)
    except UserError as err:
        print(f"zskt: error: {err}", file=sys.stderr)
        remove_refused_run_dir(output_dir_of(cfg))
        sys.exit(2)
    except KeyboardInterrupt:  # before or after Lightning's fit, which says more (`fit`)
        print("zskt: stopped by Ctrl-C outside training: nothing to resume from this moment", file=sys.stderr)
        remove_refused_run_dir(output_dir_of(cfg))
        sys.exit(128 + signal.SIGINT)
    except Exception as err:  # a full disk: raised directly, or chained under a failed save in Lightning's handlers
        if (full := disk_full(err)) is None:
            raise
        print(f"zskt: error: {disk_full_message(full, cfg.paths.output_dir)}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except UserError as error:
        print(f"zskt: error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
