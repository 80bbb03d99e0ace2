"""Supervised training of a WRN: teachers and full-data students, or the no-teacher few-shot baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zskt.methods.base import StudentModule, epoch_budget, evaluation_period


class Scratch(StudentModule):
    """Cross-entropy, SGD with Nesterov momentum, learning rate divided at fixed fractions of training.

    `recipe_epochs` is the per-dataset table `full_epochs` is looked up in (kept in the
    hyperparameters as a record of the recipe).
    """

    trains = True

    def __init__(
        self,
        name: str,
        student: dict,
        m: int | None,
        full_epochs: int,
        epochs: int | None = None,
        recipe_epochs: dict | None = None,
        reference_m: int = 5000,
        budget_scale: float = 1.0,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        milestones: tuple[float, ...] = (0.3, 0.6, 0.8),
        gamma: float = 0.2,
        evaluations: int = 20,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(name, student, channels_last, compile)
        self.save_hyperparameters()
        self.max_epochs = epoch_budget(epochs, full_epochs, m, reference_m, budget_scale)
        self.eval_every = evaluation_period(self.max_epochs, evaluations)

    def budget(self) -> dict:
        return {"epochs": self.max_epochs, "budget_scale": self.hparams.budget_scale}

    def training_step(self, batch, batch_idx: int):
        images, labels = batch
        logits = self.student(self.to_input(images))
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.student.parameters(), lr=hp.lr, momentum=hp.momentum,
                                    nesterov=hp.nesterov, weight_decay=hp.weight_decay)
        milestones = sorted({max(1, int(f * self.max_epochs)) for f in hp.milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=hp.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
