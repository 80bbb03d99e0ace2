"""The one entry point: `python -m zskt.run method=... dataset=... key=value`.

It wires configured parts together (seed, data, networks, method, trainer), runs them and
writes the run's outputs; the computing happens in the modules it wires. Mistakes a
user can fix end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pytorch_lightning.callbacks import OnExceptionCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from zskt.callbacks import Diverged
from zskt.checkpoints import atomic_write_json, atomic_write_text, load_model, save_model
from zskt.errors import UserError
from zskt.hardware import register_resolvers
from zskt.models.wide_resnet import count_parameters
from zskt.rundir import (check_resume, disk_full, disk_full_message, load_run_config, lock_run_dir, read_results,
                         releases_run_dir_locks)
from zskt.sweep import log_final_hparams
from zskt.validation import check_teacher, validate_config

log = logging.getLogger("zskt")
register_resolvers()

# Lightning notices that are expected here and would only alarm users:
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")  # zero-shot iterations
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")  # frozen teachers
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")  # tiny few-shot epochs
# a fresh fit with OnExceptionCheckpoint looks for a "last" checkpoint to resume (we pass resume's explicitly)
warnings.filterwarnings("ignore", message=r".*ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r".*there is no last checkpoint available")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RUN_CONFIG = "run_config.yaml"
RESULTS = "results.json"


# ---------------------------------------------------------------------------- config
def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolve_config(cfg: DictConfig) -> DictConfig:
    """The run's full config with every interpolation resolved; on `resume=true`, the saved one."""
    output_dir = Path(cfg.paths.output_dir)
    saved = output_dir / RUN_CONFIG
    if cfg.resume and saved.is_file():
        resumed = load_run_config(saved)
        resumed.resume = True
        return resumed
    if cfg.resume and not _is_multirun():
        raise UserError(f"resume=true but {output_dir} holds no run to resume: pass hydra.run.dir=<an earlier run dir>")
    try:
        # the `hydra` node (present when composed with the compose API) is Hydra's, not the run's
        own = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        resolved = OmegaConf.create(OmegaConf.to_container(own, resolve=True, throw_on_missing=True))
    except MissingMandatoryValue as err:
        raise UserError(f"{err.full_key} must be set: add {err.full_key}=... to the command") from None
    except OmegaConfBaseException as err:
        raise UserError(f"the config does not resolve ({str(err).splitlines()[0]}): check the overrides") from None
    resolved.resume = False
    return resolved


def _instantiate(node: DictConfig, what: str, **kwargs):
    """`hydra.utils.instantiate` with plain containers, config errors turned into one line."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except UserError:
        raise
    except Exception as err:  # instantiate wraps constructor errors in InstantiationException
        cause = err.__cause__ if isinstance(err.__cause__, UserError) else None
        if cause is not None:
            raise cause from None
        if isinstance(err.__cause__, TypeError) or "unexpected keyword" in str(err):
            raise UserError(f"{what} config has a key the {what} does not take ({str(err).splitlines()[-1][:200]}): fix the override") from None
        raise


# ---------------------------------------------------------------------------- parts
def build_student_arch(cfg: DictConfig, num_classes: int) -> tuple[dict, torch.nn.Module | None, dict | None]:
    """Architecture of the student, and its starting weights when `student.checkpoint` is set."""
    if cfg.student.get("checkpoint"):
        model, meta = load_model(cfg.student.checkpoint, expect={"num_classes": num_classes},
                                 allow_unsafe=cfg.checkpoint.allow_unsafe)
        return model.arch, model, meta
    return {"depth": cfg.student.depth, "width": cfg.student.width, "num_classes": num_classes}, None, None


def build_callbacks(cfg: DictConfig, checkpoint_every: int) -> list[pl.Callback]:
    callbacks = []
    for key, node in cfg.callbacks.items():
        extra = {}
        if key == "model_checkpoint" and node.get("every_n_epochs") is None:
            extra["every_n_epochs"] = checkpoint_every
        callbacks.append(_instantiate(node, f"callbacks.{key}", **extra))
    return callbacks


def build_trainer(cfg: DictConfig, module: pl.LightningModule) -> pl.Trainer:
    limits = module.trainer_limits()
    try:
        return _instantiate(
            cfg.trainer,
            "trainer",
            logger=_instantiate(cfg.logger, "logger"),
            callbacks=build_callbacks(cfg, limits["check_val_every_n_epoch"]),
            default_root_dir=cfg.paths.output_dir,
            **limits,
        )
    except UserError:
        raise
    except Exception as err:  # Lightning's checks of accelerator, devices, strategy and precision
        cause = err.__cause__ or err
        if not isinstance(cause, (MisconfigurationException, ValueError, RuntimeError)):
            raise
        first = str(cause).strip().splitlines()[0][:200]
        raise UserError(f"the trainer cannot start ({first}): fix trainer.accelerator / trainer.devices / "
                        "trainer.strategy / trainer.precision for this machine") from None


def check_output_dir(output_dir: Path) -> None:
    """Fail before any work when the run's outputs could not be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        raise UserError(f"cannot write to the output dir {output_dir} ({err.strerror or err}): "
                        "pass hydra.run.dir=<a writable dir> (or paths.outputs=...)") from None


def zoo_path(cfg: DictConfig, dataset: str, arch: dict, seed: int) -> Path:
    """Where the model zoo keeps a full-data scratch model."""
    return Path(cfg.paths.models) / dataset / f"wrn-{arch['depth']}-{arch['width']}-seed{seed}.pt"


def teacher_training_command(cfg: DictConfig) -> str:
    """The exact command that trains the configured teacher into the model zoo."""
    parts = ["python -m zskt.run method=scratch", f"dataset={cfg.dataset.name}",
             f"student.depth={cfg.teacher.depth}", f"student.width={cfg.teacher.width}", f"seed={cfg.teacher.seed}"]
    if cfg.dataset.get("root"):
        parts.append(f"dataset.root={cfg.dataset.root}")
    if cfg.paths.models != "outputs/models":
        parts.append(f"paths.models={cfg.paths.models}")
    return " ".join(parts)


def teacher_config(raw: DictConfig) -> DictConfig:
    """The config of a scratch run that trains `raw`'s teacher into the model zoo, in <run dir>/teacher."""
    cfg = raw.copy()
    method = OmegaConf.load(CONF_DIR / "method" / "scratch.yaml")
    method.budget_scale = raw.method.get("budget_scale", 1.0)
    method.epochs = raw.teacher.get("epochs")
    cfg.method = method
    cfg.student = {"depth": raw.teacher.depth, "width": raw.teacher.width, "checkpoint": None}
    cfg.dataset.m = None
    cfg.seed = raw.teacher.seed
    cfg.resume = False
    cfg.paths.output_dir = str(Path(raw.paths.output_dir) / "teacher")
    return cfg


def load_teacher(cfg: DictConfig, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The frozen teacher from teacher.checkpoint (the model zoo by default)."""
    path = Path(cfg.teacher.checkpoint)
    if not path.is_file():
        zoo = zoo_path(cfg, cfg.dataset.name, cfg.teacher, cfg.teacher.seed)
        hint = f"train it with `{teacher_training_command(cfg)}`, " if path == zoo else ""
        raise UserError(f"teacher checkpoint {path} does not exist: {hint}pass teacher.checkpoint=PATH, "
                        "or set teacher.train_if_missing=true")
    model, meta = load_model(path, expect={"num_classes": num_classes}, allow_unsafe=cfg.checkpoint.allow_unsafe)
    # absolute: model.pt records it, and later runs (fine-tune, abm) may start elsewhere
    info = {**model.arch, "checkpoint": str(path.resolve()), "params": count_parameters(model)}
    return model.eval().requires_grad_(False), info


def recorded_teacher(raw: DictConfig, cfg: DictConfig, student_meta: dict | None) -> str | None:
    """The teacher a starting student (student.checkpoint) was distilled from, as its model.pt records it;
    None when there is none or the user chose one (on resume, the saved config holds the first choice)."""
    recorded = ((student_meta or {}).get("teacher") or {}).get("checkpoint")
    if not recorded or cfg.resume or not OmegaConf.is_interpolation(raw.teacher, "checkpoint"):
        return None
    if not Path(recorded).is_file():
        raise UserError(f"teacher {recorded}, recorded in {cfg.student.checkpoint}, does not exist: pass teacher.checkpoint=PATH")
    return recorded


# ---------------------------------------------------------------------------- the run
@releases_run_dir_locks
def execute(raw: DictConfig) -> dict:
    """Run one configured job and return its results (also written to results.json)."""
    start = time.perf_counter()
    cfg = resolve_config(raw)
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_output_dir(output_dir)
    lock_run_dir(output_dir)  # one run per dir: held until execute returns; the kernel drops it if the process dies
    results_file = output_dir / RESULTS
    if cfg.resume and results_file.is_file():
        done = read_results(results_file)
        if done.get("status") == "completed":
            print(f"zskt: {output_dir} already completed (test accuracy {done.get('test_acc')}%); nothing to resume")
            return done

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    method_cls = get_class(cfg.method._target_)

    datamodule = _instantiate(cfg.dataset, "dataset")
    datamodule.setup("fit")
    if cfg.resume:  # what the run reads back from its dir, before it writes anything there
        check_resume(output_dir, datamodule.indices, method_cls.trains, cfg.checkpoint.allow_unsafe)
    arch, initial, initial_meta = build_student_arch(cfg, datamodule.num_classes)

    extra, teacher_info = {}, None
    if method_cls.trains and method_cls.uses_train_data:
        extra["m"] = datamodule.m
    if method_cls.needs_teacher:
        cfg.teacher.checkpoint = recorded_teacher(raw, cfg, initial_meta) or cfg.teacher.checkpoint
        if not Path(cfg.teacher.checkpoint).is_file() and cfg.teacher.train_if_missing:
            print(f"zskt: teacher {cfg.teacher.checkpoint} is missing; training it first ({teacher_training_command(cfg)})")
            trained = execute(teacher_config(raw))
            if not Path(cfg.teacher.checkpoint).is_file():  # a custom path outside the zoo
                shutil.copyfile(Path(cfg.paths.output_dir) / "teacher" / trained["model"], cfg.teacher.checkpoint)
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
        extra["teacher"], teacher_info = load_teacher(cfg, datamodule.num_classes)
        check_teacher(extra["teacher"], datamodule.test_inputs, cfg.teacher.checkpoint)

    module = _instantiate(
        cfg.method,
        "method",
        student=arch,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        **extra,
    )
    if initial is not None:
        module.student.load_state_dict(initial.state_dict())

    trainer = build_trainer(cfg, module)
    # every input is checked: from here on the run writes its outputs (check_output_dir made the dir)
    if not cfg.resume:
        atomic_write_text(OmegaConf.to_yaml(cfg), output_dir / RUN_CONFIG)
    datamodule.save_subset()

    if method_cls.trains:
        ckpt_path = None
        if cfg.resume:
            last = output_dir / "checkpoints" / "last.ckpt"
            if last.is_file():
                ckpt_path = str(last)
            elif not _is_multirun():
                raise UserError(f"resume=true but {last} does not exist: the run never reached its first checkpoint; start it again")
        try:
            if method_cls.uses_train_data:
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            else:
                trainer.fit(module, val_dataloaders=datamodule.val_dataloader(), ckpt_path=ckpt_path)
        except Diverged as err:
            return report_divergence(cfg, output_dir, str(err), time.perf_counter() - start)
        except SIGTERMException:
            # Lightning stopped at the end of a batch; an OnExceptionCheckpoint (callbacks.on_exception) saved the moment
            saved = [f"the moment is saved in {c.ckpt_path}; " for c in trainer.callbacks
                     if isinstance(c, OnExceptionCheckpoint)]
            print(f"zskt: stopped by SIGTERM at step {trainer.global_step}: {''.join(saved)}resume with "
                  f"`python -m zskt.run hydra.run.dir={output_dir} resume=true` (from the last evaluation's "
                  "checkpoint, last.ckpt)", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
    tested = trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False)[0]
    final = tested["final_test_acc"]
    if teacher_info is not None:
        teacher_info["test_acc"] = round(float(tested["teacher_test_acc"]), 4)
    best = float(module.best_accuracy.compute()) if method_cls.trains else None

    model_file = output_dir / "model.pt"
    if method_cls.trains:
        save_model(module.student, model_file, dataset=datamodule.name, mean=datamodule.mean, std=datamodule.std,
                   method=cfg.method.name, teacher=teacher_info)
        if cfg.method.name == "scratch" and datamodule.m is None and trainer.is_global_zero:
            save_model(module.student, zoo_path(cfg, datamodule.name, arch, cfg.seed), dataset=datamodule.name,
                       mean=datamodule.mean, std=datamodule.std, method=cfg.method.name)

    results = {
        "status": "completed",
        "method": cfg.method.name,
        "dataset": datamodule.name,
        "m": datamodule.m,
        "seed": cfg.seed,
        "student": {"depth": arch["depth"], "width": arch["width"], "params": module.student_params},
        "teacher": teacher_info,
        "test_acc": round(float(final), 4),
        "best_test_acc": None if best is None else round(best, 4),
        "best_test_acc_note": "best of the periodic test-set evaluations (the originals' number); test_acc is the final one",
        "budget": module.budget(trainer.world_size, len(datamodule.train_split.labels)),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "model": "model.pt" if method_cls.trains else cfg.student.checkpoint,
        "precision": str(trainer.precision),
        **module.extra_results(),
    }
    log_final_hparams(trainer, cfg, results)
    if trainer.is_global_zero:
        atomic_write_json(results, results_file)
    best_text = "" if best is None else f" (best of evaluations {best:.2f}%)"
    print(f"zskt: {cfg.method.name} on {datamodule.name}: final test accuracy {final:.2f}%{best_text}; results in {output_dir}")
    return results


def report_divergence(cfg: DictConfig, output_dir: Path, message: str, seconds: float) -> dict:
    """Record a diverged run in results.json; a single run then exits with status 1, a sweep goes on."""
    results = {"status": "diverged", "method": cfg.method.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
               "message": message, "last_good_checkpoint": "checkpoints/last.ckpt", "wall_time_s": round(seconds, 2)}
    atomic_write_json(results, output_dir / RESULTS)
    print(f"zskt: {cfg.method.name} diverged: {message}; the last good checkpoint is {output_dir}/checkpoints/last.ckpt",
          file=sys.stderr)
    if not _is_multirun():
        sys.exit(1)
    return results


def run(cfg: DictConfig) -> dict:
    """`execute` with user errors reported as one line and exit status 2."""
    try:
        return execute(cfg)
    except UserError as err:
        print(f"zskt: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # a full disk: raised directly, or chained under a failed save in Lightning's handlers
        if (full := disk_full(err)) is None:
            raise
        print(f"zskt: error: {disk_full_message(full, cfg.paths.output_dir)}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


def check_overrides(args: list[str]) -> None:
    """Compose the config from the command line once before Hydra does, so an unknown option or key
    is one line and exit status 2 instead of Hydra's multi-line report. Sweeps are left to Hydra."""
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in args) or not args:
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name="config", overrides=args)
    except MissingConfigException as err:
        group = Path(str(err.missing_cfg_file or "")).parent.name or "option"
        options = ", ".join(err.options or [])
        raise UserError(f"unknown {group} '{Path(str(err.missing_cfg_file)).name}': choose one of {options}") from None
    except Exception as err:  # Hydra's override and composition errors
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        cause = f" ({str(err.__cause__).splitlines()[0]})" if err.__cause__ else ""
        raise UserError(f"{lines[0] if lines else type(err).__name__}{cause}: fix the override "
                        "(new keys need a leading +)") from None


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except UserError as error:
        print(f"zskt: error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
