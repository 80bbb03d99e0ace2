"""The package's Lightning callbacks: TensorBoard views of the generator (a grid of samples and the
teacher's class histogram), a progress bar over a run's iterations, the run's wall time across
resumes, and the divergence guard."""

from __future__ import annotations

import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid


class GeneratorSamples(pl.Callback):
    """At every evaluation of a zero-shot run, log `n_samples` generated images from a fixed z
    (so successive grids are comparable) and a histogram of the teacher's predicted classes.

    The fixed z comes from its own seeded stream, never from the run's noise generator, so
    logging does not change what the run trains on.
    """

    def __init__(self, n_samples: int = 64, nrow: int = 8, seed: int = 0) -> None:
        self.n_samples, self.nrow, self.seed = n_samples, nrow, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        generator = getattr(pl_module, "generator", None)
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if generator is None or logger is None or not trainer.is_global_zero:
            return
        z = torch.randn(self.n_samples, generator.z_dim, generator=torch.Generator().manual_seed(self.seed))
        was_training = generator.training
        # generator BN in train mode, as during training; its running stats are never used,
        # but keep them untouched so logging leaves no trace in the weights
        saved = {k: v.clone() for k, v in generator.state_dict().items() if "running" in k or "num_batches" in k}
        generator.train()
        with torch.no_grad():
            images = generator(z.to(pl_module.device)).float()
            classes = pl_module.teacher(pl_module.to_input(images)).argmax(1)
        generator.load_state_dict(saved, strict=False)
        generator.train(was_training)
        step = getattr(pl_module, "iteration", trainer.global_step)  # the x value of the run's scalars
        grid = make_grid(images.cpu(), nrow=self.nrow, normalize=True, scale_each=True)
        logger.experiment.add_image("generator/samples", grid, step)
        logger.experiment.add_histogram("generator/teacher_classes", classes.cpu(), step,
                                        bins=np.arange(pl_module.num_classes + 1) - 0.5)


class IterationProgressBar(TQDMProgressBar):
    """Lightning's progress bar; a run budgeted in iterations (a module with `total_iterations` and
    `iteration`: zero-shot) gets one bar over the whole run, "iteration 20/300" with its ETA, instead
    of one bar per evaluation block ("Epoch 0: 20/75")."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = getattr(pl_module, "total_iterations", None)
        if total is None:
            super().on_train_epoch_start(trainer, pl_module)
            return
        bar = self.train_progress_bar
        if bar.total != total:  # the fit's first block (a resumed run starts at its iteration)
            bar.reset(total=total)
            bar.initial = bar.n = pl_module.iteration
            bar.set_description("iteration")
            bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        total = getattr(pl_module, "total_iterations", None)
        if total is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar, n = self.train_progress_bar, pl_module.iteration
        if self._should_update(n, total) and not bar.disable:
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class WallTime(pl.Callback):
    """The run's wall time since `start` (a `time.perf_counter()` value) and its process CPU time since
    `cpu_start` (a `time.process_time()` value, every thread of this process), plus those of the parts
    before a resume: kept in every checkpoint, so a resumed run's results.json counts all of its parts
    (up to the checkpoint each resumed from). Lightning's `Timer` counts the fit's stages only, not the
    data setup and the final test, and no CPU time. Each periodic evaluation of the fit is stamped with
    both (`wall_s`, `cpu_s`): CPU seconds compare methods' cost when other jobs share the cores."""

    def __init__(self, start: float, cpu_start: float) -> None:
        self.start, self.before = start, 0.0
        self.cpu_start, self.cpu_before = cpu_start, 0.0

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def cpu_seconds(self) -> float:
        return self.cpu_before + time.process_time() - self.cpu_start

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the module's on_validation_epoch_end appended the evaluation, before the checkpoint
        # callbacks (Lightning runs those last) save it
        evaluations = getattr(pl_module, "evaluations", None)
        if trainer.state.fn == "fit" and evaluations and "wall_s" not in evaluations[-1]:
            evaluations[-1].update(wall_s=round(self.seconds(), 1), cpu_s=round(self.cpu_seconds(), 1))

    def state_dict(self) -> dict:
        return {"wall_time_s": self.seconds(), "cpu_time_s": self.cpu_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before = float(state_dict.get("wall_time_s", 0.0))
        self.cpu_before = float(state_dict.get("cpu_time_s", 0.0))


class Diverged(Exception):
    """Training produced a non-finite loss."""


class DivergenceGuard(pl.Callback):
    """Stop a run whose logged training losses turn non-finite.

    Checked every `check_every_n_steps` batches (a check syncs the device, so not every
    step) and at every epoch end, before the epoch's checkpoint is written: the last
    checkpoint on disk is always a good one.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps

    def _check(self, trainer: pl.Trainer) -> None:
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train/") and name.endswith("loss") and not torch.isfinite(value).all():
                where = f"epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_progress.current.completed}"
                iteration = getattr(trainer.lightning_module, "iteration", None)
                if iteration is not None and hasattr(trainer.lightning_module, "total_iterations"):
                    where = f"iteration {iteration}"
                raise Diverged(f"{name} became {float(value)} at {where}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)
