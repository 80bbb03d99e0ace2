"""A run's outputs: its config and few-shot subset when it starts, and when it ends results.json,
the student's model.pt and (full-data scratch runs) the model zoo's copy. Written on global rank
zero only, each file atomically.

results.json schema (a completed run): status, method, dataset, m, seed, student {family, the
family's arguments (WRN: depth, width), name, params}, teacher {the same, num_classes, checkpoint,
test_acc} or null, test_acc (the
final accuracy), best_test_acc (best of the periodic evaluations) and its note, budget, wall_time_s,
cpu_time_s (this process's CPU seconds, every thread), model, precision, evaluations (the periodic
test evaluations of the fit: epoch, student_images, test_acc, wall_s and cpu_s since the run
started, and for zero-shot teacher_max_prob and top_class_share, means over the block's generated
batches; the learning curve), plus the method's own entries (`extra_results`). A diverged run: status,
method, dataset, seed, message, last_good_checkpoint, wall_time_s.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from zskt.checkpoints import save_model
from zskt.config import zoo_path
from zskt.errors import UserError
from zskt.io import atomic_write_json, atomic_write_text
from zskt.models.families import network_info, slug_of
from zskt.rundir import MODEL_FILE, RESULTS, RUN_CONFIG, note_new_run_dir, read_results

log = logging.getLogger("zskt")
BEST_NOTE = "best of the periodic test-set evaluations (the originals' number); test_acc is the final one"


def check_output_dir(cfg: DictConfig) -> None:
    """Fail before any work when the run's outputs could not be written."""
    output_dir = Path(cfg.paths.output_dir)
    note_new_run_dir(output_dir)  # a command refused from here on takes it away again
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        raise UserError(f"cannot write to the output dir {output_dir} ({err.strerror or err}): "
                        "pass hydra.run.dir=<a writable dir> (or paths.outputs=...)") from None


def check_fresh(cfg: DictConfig) -> None:
    """A fresh run (resume=false) refuses the dir of an earlier one: Lightning would pick up that
    run's checkpoints as its "last" one."""
    output_dir = Path(cfg.paths.output_dir)
    checkpoints = Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=output_dir))
    if not cfg.resume and checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
        raise UserError(f"{output_dir} holds the checkpoints of an earlier run: continue it with resume=true, "
                        "or pass another hydra.run.dir")


def completed_run(output_dir: Path) -> dict | None:
    """The results of a run that already completed in `output_dir` (resume finds nothing to do)."""
    path = output_dir / RESULTS
    if not path.is_file():
        return None
    done = read_results(path)
    return done if done.get("status") == "completed" else None


def write_start(cfg: DictConfig, output_dir: Path, datamodule) -> None:
    """The files a run writes once every input is checked: its resolved config (kept on resume)
    and its few-shot subset."""
    if not cfg.resume:
        atomic_write_text(OmegaConf.to_yaml(cfg), output_dir / RUN_CONFIG)
    datamodule.save_subset()


def save_student(cfg: DictConfig, output_dir: Path, module: pl.LightningModule, datamodule,
                 teacher_info: dict | None, done: dict) -> None:
    """The trained student as model.pt; a full-data scratch model is also published to the model zoo,
    recording the run that made it, unless the zoo already holds that file (`overwrite_zoo=true`
    replaces it): a smoke test must not silently replace the teacher later runs learn from."""
    describe = {"dataset": datamodule.name, "mean": datamodule.mean, "std": datamodule.std, "method": cfg.method.name}
    arch = module.student_arch
    save_model(module.student, output_dir / MODEL_FILE, teacher=teacher_info, arch=arch, **describe)
    if cfg.method.name != "scratch" or datamodule.m is not None:
        return
    zoo = Path(zoo_path(cfg.paths.models, datamodule.name, slug_of(arch), cfg.seed))
    if zoo.exists() and not cfg.overwrite_zoo:
        log.warning(f"zskt: the model zoo already holds {zoo}: kept it (overwrite_zoo=true replaces it); "
                    f"this run's model is {output_dir / MODEL_FILE}")
        return
    made_by = {"results": str((output_dir / RESULTS).resolve()), "test_acc": done["test_acc"], "budget": done["budget"]}
    save_model(module.student, zoo, arch=arch, run=made_by, **describe)


def collect(cfg: DictConfig, module: pl.LightningModule, trainer: pl.Trainer, datamodule, tested: dict,
            teacher_info: dict | None, seconds: float, cpu_seconds: float) -> dict:
    """The results.json of a completed run (schema in the module docstring)."""
    trains = type(module).trains
    best = float(module.best_accuracy.compute()) if trains else None
    if teacher_info is not None:
        teacher_info = {**teacher_info, "test_acc": round(float(tested["teacher/test_acc"]), 4)}
    arch = module.student_arch
    return {
        "status": "completed",
        "method": cfg.method.name,
        "dataset": datamodule.name,
        "m": datamodule.m,
        "seed": cfg.seed,
        "student": network_info(arch, module.student_params),
        "teacher": teacher_info,
        "test_acc": round(float(tested["test/acc"]), 4),
        "best_test_acc": None if best is None else round(best, 4),
        "best_test_acc_note": BEST_NOTE,
        "budget": module.budget(trainer.world_size, len(datamodule.train_split.labels)),
        "wall_time_s": round(seconds, 2),
        "cpu_time_s": round(cpu_seconds, 2),
        "model": MODEL_FILE if trains else cfg.student.checkpoint,
        "precision": str(trainer.precision),
        "evaluations": module.evaluations,
        **module.extra_results(),
    }


def write_results(results: dict, output_dir: Path, loggers=()) -> None:
    """results.json, and the run's summary in the log: its accuracy (and its teacher's), where its
    results are, and how to open what each of its `loggers` wrote."""
    atomic_write_json(results, output_dir / RESULTS)
    best = results.get("best_test_acc")
    best_text = "" if best is None else f" (best of evaluations {best:.2f}%)"
    teacher = (results.get("teacher") or {}).get("test_acc")
    teacher_text = "" if teacher is None else f", teacher {teacher:.2f}%"
    log.info(f"{results['method']} on {results['dataset']}: final test accuracy {results['test_acc']:.2f}%"
             f"{best_text}{teacher_text}; results in {output_dir / RESULTS}")
    for line in logger_lines(loggers):
        log.info(line)


def logger_lines(loggers) -> list[str]:
    """Where each of Lightning's loggers wrote the run's curves, and the command that opens them."""
    from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    lines = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            where = Path(logger.log_dir)  # without the trailing / of name="" version=""
            lines.append(f"TensorBoard logs in {where}: open them with `tensorboard --logdir {where}`")
        elif isinstance(logger, CSVLogger):
            lines.append(f"metrics in {Path(logger.log_dir) / 'metrics.csv'}")
        elif isinstance(logger, MLFlowLogger):
            lines.append(f"MLflow run {logger.run_id} in {logger.save_dir}: open it with "
                         f"`mlflow ui --backend-store-uri {logger.save_dir}`")
        elif isinstance(logger, WandbLogger):
            lines.append(f"W&B run in {Path(logger.save_dir) / 'wandb'} (offline runs: upload with `wandb sync "
                         f"{Path(logger.save_dir) / 'wandb'}/offline-run-*`)")
    return lines


def record_divergence(cfg: DictConfig, output_dir: Path, message: str, last_good: Path | None, seconds: float) -> dict:
    """results.json of a run whose loss became non-finite; `last_good` is the checkpoint to go back to."""
    results = {"status": "diverged", "method": cfg.method.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
               "message": message,
               "last_good_checkpoint": None if last_good is None else os.path.relpath(last_good, output_dir),
               "wall_time_s": round(seconds, 2)}
    atomic_write_json(results, output_dir / RESULTS)
    return results
