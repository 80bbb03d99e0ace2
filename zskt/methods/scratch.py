"""Supervised training of a WRN: teachers and full-data students, or the no-teacher few-shot baseline.

The recipe (SGD with Nesterov momentum, the learning rate divided at fixed fractions of the
epochs, epochs stretched for few-shot sets) is shared with KD+AT through `SGDTrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zskt.methods.base import RunInputs, StudentModule, epoch_budget, evaluation_period


@dataclass(frozen=True)
class SGDRecipe:
    """The supervised recipe (docs/method.md#scratch-and-no-teacher-few-shot); the values come from
    conf/method/scratch.yaml."""

    full_epochs: int
    epochs: int | None
    reference_m: int
    budget_scale: float
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    milestones: tuple[float, ...]
    gamma: float
    evaluations: int


class SGDTrained:
    """Mixin for a student module trained with an `SGDRecipe`: its length, evaluation period,
    optimiser and schedule. Call `use_recipe` in `__init__`."""

    recipe: SGDRecipe
    student: torch.nn.Module

    @classmethod
    def run_kwargs(cls, run: RunInputs) -> dict:
        """M, the images per class the recipe's length stretches for (None: the full set)."""
        return {**super().run_kwargs(run), "m": run.datamodule.m}

    def use_recipe(self, m: int | None, recipe: dict) -> None:
        """Set the recipe and the training length for M images per class (None: the full set)."""
        self.recipe = SGDRecipe(**recipe)
        r = self.recipe
        self.max_epochs = epoch_budget(r.epochs, r.full_epochs, m, r.reference_m, r.budget_scale)
        self.eval_every = evaluation_period(self.max_epochs, r.evaluations)

    def budget(self, world_size: int, train_images: int) -> dict:
        return {"epochs": self.max_epochs, "budget_scale": self.recipe.budget_scale,
                "student_images": self.max_epochs * train_images}

    def configure_optimizers(self):
        r = self.recipe
        optimizer = torch.optim.SGD(self.student.parameters(), lr=r.lr, momentum=r.momentum,
                                    nesterov=r.nesterov, weight_decay=r.weight_decay)
        milestones = sorted({max(1, int(f * self.max_epochs)) for f in r.milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=r.gamma)
        # named as the zero-shot methods name theirs (LearningRateMonitor: lr/student, not lr-SGD)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "name": "lr/student"}}


class Scratch(SGDTrained, StudentModule):
    """Cross-entropy on the labels, with the SGD recipe (`recipe`: the fields of `SGDRecipe`)."""

    trains = True

    def __init__(self, name: str, student: dict, m: int | None, channels_last: bool, compile: bool, **recipe) -> None:
        super().__init__(name, student, channels_last, compile)
        self.save_hyperparameters()
        self.use_recipe(m, recipe)

    def training_step(self, batch, batch_idx: int):
        images, labels = batch
        logits = self.student(self.to_input(images))
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss
