"""The fit of a built run: the checkpoint a resumed run continues from, and how a fit that does not
reach its end ends: diverged (results.json says so), or stopped by SIGTERM or Ctrl-C (the line says
what was saved and how to resume). Those end as `RunStopped`, which only the entry point turns into
an exit status."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import OnExceptionCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from zskt import results
from zskt.callbacks import Diverged, WallTime
from zskt.config import is_multirun
from zskt.errors import RunStopped, UserError
from zskt.methods.base import StudentModule

if TYPE_CHECKING:
    from zskt.data.datamodule import ImageDataModule


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


def fit(cfg: DictConfig, trainer: pl.Trainer, module: StudentModule, datamodule: ImageDataModule,
        wall: WallTime) -> dict | None:
    """Train (on resume=true from the checkpoint `resume_checkpoint` finds); the results of a diverged
    run in a sweep. A single diverged run raises `RunStopped` with status 1, SIGTERM with 143 and
    Ctrl-C with 130, each with the line that says what to do."""
    output_dir = Path(cfg.paths.output_dir)
    last = Path(trainer.checkpoint_callback.format_checkpoint_name({})) if trainer.checkpoint_callback else None
    ckpt_path = resume_checkpoint(cfg, trainer)
    if ckpt_path is None:
        module.before_first_fit(trainer, datamodule)
    try:
        trainer.fit(module, **module.fit_data(datamodule), ckpt_path=ckpt_path)
    except Diverged as err:
        done = results.record_divergence(cfg, output_dir, str(err), last, wall.seconds())
        line = f"{cfg.method.name} diverged: {err}; the last good checkpoint is {last}"
        if not is_multirun():
            raise RunStopped(line, 1) from None
        print(f"zskt: {line}", file=sys.stderr)  # the sweep goes on with its next job
        return done
    except SystemExit as stop:
        # SIGTERM: Lightning stopped at the end of a batch (SIGTERMException). Ctrl-C: Lightning caught the
        # KeyboardInterrupt, marked the trainer interrupted and exits 1. Either way an OnExceptionCheckpoint
        # (callbacks.on_exception) saved the moment
        sigterm = isinstance(stop, SIGTERMException)
        if not sigterm and not (trainer.interrupted and stop.code == 1):
            raise
        raise RunStopped(stopped_line(trainer, module, "SIGTERM" if sigterm else "Ctrl-C", last, output_dir),
                         128 + (signal.SIGTERM if sigterm else signal.SIGINT)) from None
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
