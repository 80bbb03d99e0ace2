"""Extra-M fine-tuning of a zero-shot student (the paper's "zero-shot + M images" result).

The student starts from a zero-shot model (`student.checkpoint`) and sees M images per class:
loss (1 - alpha) CE + 2 alpha tau^2 KL(t || s) + lambda * sum over parameter tensors of
mean |theta - theta_0|, Adam with a per-epoch cosine schedule (docs/method.md#extra-m-fine-tuning).
The student stays in eval mode throughout: its BN running statistics remain the zero-shot
ones while the BN affine parameters train.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch

from zskt.errors import UserError
from zskt.losses import anchor_loss, distillation_loss
from zskt.methods.base import DistillationModule, RunInputs, epoch_budget, evaluation_period
from zskt.models.families import build_network

if TYPE_CHECKING:
    from zskt.data.datamodule import ImageDataModule


class Finetune(DistillationModule):
    """Fine-tune a zero-shot student on M images per class, anchored to its starting weights theta_0.

    The starting test accuracy comes from `trainer.validate` before the fit (`before_first_fit`,
    which the run calls after loading `student.checkpoint` into the student), theta_0 (a frozen copy
    of the student) is taken when the fit first starts. Both are module state, so they live in
    the checkpoint and a resumed run keeps the original ones.
    """

    trains = True

    @classmethod
    def run_kwargs(cls, run: RunInputs) -> dict:
        """The teacher and M, the images per class it fine-tunes on."""
        return {**super().run_kwargs(run), "m": run.datamodule.m}

    def __init__(
        self,
        name: str,
        student: dict,
        teacher: torch.nn.Module,
        m: int | None,
        student_checkpoint: str | None,
        full_epochs: int,
        epochs: int | None,
        budget_scale: float,
        lr: float,
        alpha: float,
        temperature: float,
        anchor_weight: float,
        evaluations: int,
        channels_last: bool,
        compile: bool,
    ) -> None:
        super().__init__(name, student, teacher, channels_last, compile)
        if m is None:
            raise UserError("method=finetune trains on M images per class: add dataset.m=M (e.g. dataset.m=100)")
        if not student_checkpoint:
            raise UserError("method=finetune starts from a zero-shot student: add student.checkpoint=<its model.pt>")
        self.save_hyperparameters(ignore=["teacher"])
        # no few-shot stretching: the recipe's epochs run over the 10*M images whatever M is
        self.max_epochs = epoch_budget(epochs, full_epochs, None, m, budget_scale)
        self.eval_every = evaluation_period(self.max_epochs, evaluations)
        self.theta_0 = build_network(student).requires_grad_(False)
        self.register_buffer("anchored", torch.tensor(False))
        self.register_buffer("start_accuracy", torch.tensor(float("nan")))

    def train(self, mode: bool = True):
        super().train(mode)
        # BN running statistics stay the zero-shot student's; BN affine parameters still train
        self.student.eval()
        self.theta_0.eval()
        return self

    # ------------------------------------------------------------------ bookkeeping
    def budget(self, world_size: int, train_images: int) -> dict:
        return {"epochs": self.max_epochs, "budget_scale": self.hparams.budget_scale,
                "student_images": self.max_epochs * train_images}

    def extra_results(self) -> dict:
        return {"start_test_acc": round(float(self.start_accuracy), 4)}

    def on_fit_start(self) -> None:
        # Lightning trains in the mode the module is in, and a new module is in train mode:
        # apply this class's train() (student in eval) before any forward, the first one included
        self.train()
        # a resumed run restores theta_0 from its checkpoint before this hook: taking it again
        # would anchor to the resumed weights
        if bool(self.anchored):
            return
        self.theta_0.load_state_dict(self.student.state_dict())
        self.anchored.fill_(True)

    def on_validation_epoch_end(self) -> None:
        # trainer.validating is also true in the fit's own validation loop: the entry point tells them apart
        if self.trainer.state.fn == "fit":  # a periodic evaluation during the fit
            super().on_validation_epoch_end()
            return
        # trainer.validate before the fit: the starting student's accuracy, not an evaluation of the fine-tune
        self.log("eval/acc", self.eval_accuracy.compute() * 100.0, sync_dist=True)
        self.eval_accuracy.reset()

    def before_first_fit(self, trainer: pl.Trainer, datamodule: ImageDataModule) -> None:
        """Measure the starting student's test accuracy (results.json's start_test_acc)."""
        metrics = trainer.validate(self, datamodule=datamodule, verbose=False)[0]
        # from trainer.validate's returned metrics: under ddp_spawn the validation ran in other processes
        self.start_accuracy.fill_(float(metrics["eval/acc"]))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.student.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.max_epochs)
        # named as the zero-shot methods name theirs (LearningRateMonitor: lr/student, not lr-SGD)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "name": "lr/student"}}

    # ------------------------------------------------------------------ training
    def anchor_term(self) -> torch.Tensor:
        """Sum over parameter tensors of mean |theta - theta_0| (0 when the fine-tune starts)."""
        return anchor_loss(list(self.student.parameters()), list(self.theta_0.parameters()))

    def training_step(self, batch, batch_idx: int):
        hp = self.hparams
        images, labels = batch
        x = self.to_input(images)
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        anchor = self.anchor_term()
        loss = distillation_loss(s_logits, t_logits, labels, hp.alpha, hp.temperature) + hp.anchor_weight * anchor
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/anchor", anchor)
        return loss
