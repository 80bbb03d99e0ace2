"""What every method shares: the student network, test-set accuracy, the speed switches, budgets,
and what a method asks of the run that builds it (`RunInputs`, `StudentModule.run_kwargs`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import Tensor
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from zskt.errors import UserError
from zskt.models.attention_points import AttentionPoints, pair_points
from zskt.models import families
from zskt.models.families import build_network
from zskt.models.size_and_layout import count_parameters, set_channels_last
from zskt.validation import check

if TYPE_CHECKING:
    from zskt.data.datamodule import ImageDataModule

log = logging.getLogger("zskt")


def scaled(n: int, budget_scale: float) -> int:
    """A training length multiplied by `budget_scale`, never below 1."""
    check("method.budget_scale", budget_scale)
    return max(1, int(round(n * budget_scale)))


def epoch_budget(epochs: int | None, full_epochs: int, m: int | None, reference_m: int, budget_scale: float) -> int:
    """Epochs to train: `epochs` if given, else the full-data length `full_epochs`, stretched to
    `int(full_epochs * reference_m / m)` for a few-shot set (keeping the step count near the
    full-data run, docs/method.md#scratch-and-no-teacher-few-shot); either way multiplied by `budget_scale`."""
    if epochs is None:
        epochs = full_epochs if m is None else int(full_epochs * reference_m / m)
    check("method.epochs", epochs)
    return scaled(epochs, budget_scale)


def evaluation_period(total: int, evaluations: int) -> int:
    """Evaluate every this many epochs/iteration-blocks to get about `evaluations` evaluations."""
    check("method.evaluations", evaluations)
    return max(1, total // evaluations)


@dataclass
class RunInputs:
    """What the run offers a method class's `run_kwargs`: its resolved config, the prepared data
    module, the student's arch, and `teacher`, which loads the teacher when first called (training it
    first where it is missing and teacher.train_if_missing allows) and returns the network and its
    description for results.json. Only a method that calls it gets a teacher."""

    cfg: DictConfig
    datamodule: ImageDataModule
    student_arch: dict
    teacher: Callable[[], tuple[torch.nn.Module, dict]]


class StudentModule(pl.LightningModule):
    """A student network (any family, `student` is its arch) evaluated on the test set. On its own it is the `evaluate` method.

    Periodic evaluations (validation loop, run on the test split as the originals do) log
    `eval/acc` and the originals' best-of-evaluations `eval/best_acc`; `trainer.test` gives
    the final accuracy `test/acc` that results.json reports as the headline (`test_acc`).
    """

    trains = False  # True: the run fits the module (checkpoints, resume, model.pt), not only tests it
    uses_train_data = True  # False: the method makes its own training batches; the data module only evaluates
    uses_attention = False  # True: the method takes `attention_layers` (zskt.models.families.attention_layers)
    logs_in_iterations = False  # True: a run budgeted in iterations (`iteration`) logs every scalar at its iteration

    def __init__(self, name: str, student: dict, channels_last: bool, compile: bool) -> None:
        super().__init__()
        self.method_name = name
        self.student = set_channels_last(build_network(student), channels_last)
        self.student_arch = dict(student)
        self.channels_last = channels_last
        self.num_classes = num_classes = student["num_classes"]
        self.eval_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.final_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.best_accuracy = MaxMetric()
        # in the checkpoint: a resumed run still knows the evaluations made before the kill
        self.best_accuracy.persistent(True)
        # every periodic evaluation of the fit: {"epoch", "student_images", "test_acc"} (the
        # learning curve in results.json; in the checkpoint too, so a resumed run keeps its start)
        self.evaluations: list[dict] = []
        if compile:
            # in place: the state-dict keys keep their names (no `_orig_mod.` prefix)
            self.student.compile()

    # ------------------------------------------------------------------ helpers
    def to_input(self, images: Tensor) -> Tensor:
        """Put a batch in the memory format the networks use."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    @property
    def student_params(self) -> int:
        return count_parameters(self.student)

    def budget(self, world_size: int, train_images: int) -> dict:
        """The training length, for results.json; `student_images` counts the images the student
        took optimiser steps on (the unit that makes methods' compute comparable). `train_images`
        is the (few-shot) split an epoch passes over (a DDP sampler pads it by at most
        world_size - 1). Passed in rather than read from self.trainer: under DDP with spawn the
        module in the launching process is never attached to the trainer."""
        return {}

    def extra_results(self) -> dict:
        """Method-specific entries merged into results.json (e.g. a fine-tune's starting accuracy)."""
        return {}

    @classmethod
    def run_kwargs(cls, run: RunInputs) -> dict:
        """The constructor arguments the method takes from the run, besides its config node's values and
        `student`, `channels_last` and `compile`: none for a student evaluated on its own."""
        return {}

    def training_batches(self, datamodule: ImageDataModule) -> int:
        """The training batches of the whole run (the logging period follows from it): its iterations,
        or its epochs times the train loader's length; 1 for a method that does not train."""
        if hasattr(self, "total_iterations"):
            return self.total_iterations
        if not (self.trains and self.uses_train_data):
            return 1
        return getattr(self, "max_epochs", 1) * len(datamodule.train_dataloader())

    def fit_data(self, datamodule: ImageDataModule) -> dict:
        """The data arguments of `trainer.fit`: the data module, or only its evaluation loader for a
        method that makes its own training batches."""
        if self.uses_train_data:
            return {"datamodule": datamodule}
        return {"val_dataloaders": datamodule.val_dataloader()}

    def before_first_fit(self, trainer: pl.Trainer, datamodule: ImageDataModule) -> None:
        """Called before a fit that starts from the beginning (not a resumed one), e.g. to measure
        the starting student."""

    def trainer_kwargs(self) -> dict:
        """Trainer arguments that follow from this method's budget: length and evaluation period."""
        return {"max_epochs": getattr(self, "max_epochs", 1), "check_val_every_n_epoch": getattr(self, "eval_every", 1)}

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.eval_accuracy.update(self.student(self.to_input(images)), labels)

    def on_validation_epoch_end(self) -> None:
        accuracy = self.eval_accuracy.compute() * 100.0
        self.eval_accuracy.reset()
        self.best_accuracy.update(accuracy)
        self.log("eval/acc", accuracy, sync_dist=True)
        self.log("eval/best_acc", self.best_accuracy.compute(), sync_dist=True)
        self.log_iteration_axis()
        if self.trainer.state.fn == "fit":  # not trainer.validate's measurement before a fit
            self.evaluations.append({"epoch": self.current_epoch + 1, "student_images": self.images_so_far(),
                                     "test_acc": round(float(accuracy), 4)})
            self.add_to_evaluation(self.evaluations[-1])
            if self.trainer.is_global_zero:  # one line per evaluation, in the console and run.log
                log.info(self.evaluation_line(self.evaluations[-1]))

    def add_to_evaluation(self, evaluation: dict) -> None:
        """A method's own measures of the block just evaluated, added to its `evaluations` entry; runs
        on every rank (metrics sync under DDP). None by default."""

    def evaluation_line(self, evaluation: dict) -> str:
        """The line an evaluation prints, in the run's own unit (here Lightning epochs, which for the
        data-free methods are the benchmark's epochs)."""
        return f"epoch {evaluation['epoch']}/{self.trainer.max_epochs}: test accuracy {evaluation['test_acc']:.2f}%"

    def images_so_far(self) -> int:
        """The images the student has taken optimiser steps on when this evaluation runs (the unit of
        `budget`'s student_images): completed epochs times the (few-shot) train split."""
        return (self.current_epoch + 1) * len(self.trainer.datamodule.train_split.labels)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["evaluations"] = list(self.evaluations)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.evaluations = list(checkpoint.get("evaluations", []))

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.final_accuracy.update(self.student(self.to_input(images)), labels)

    def on_test_epoch_end(self) -> None:
        accuracy = self.final_accuracy.compute() * 100.0
        self.final_accuracy.reset()
        self.best_accuracy.update(accuracy)
        self.log("test/acc", accuracy, sync_dist=True)
        self.log_iteration_axis()

    def log_iteration_axis(self) -> None:
        """With `logs_in_iterations`: the scalars logged with this call go to the loggers at the run's
        iteration. A logged `step` is Lightning's own way to choose the x value (it counts batches,
        or optimiser steps, otherwise), and then it adds no `epoch` scalar, meaningless here."""
        if self.logs_in_iterations:
            self.log("step", float(self.iteration), batch_size=1)


class DistillationModule(StudentModule):
    """A student taught by a frozen teacher: the teacher stays in eval mode, gets no gradients,
    sits in no optimiser, and its test accuracy is measured next to the student's."""

    def __init__(self, name: str, student: dict, teacher: torch.nn.Module, channels_last: bool,
                 compile: bool) -> None:
        super().__init__(name, student, channels_last, compile)
        self.teacher = set_channels_last(teacher, channels_last).eval().requires_grad_(False)
        self.teacher_accuracy = MulticlassAccuracy(num_classes=student["num_classes"], average="micro")
        if compile:
            self.teacher.compile()
        self.student_points: AttentionPoints | None = None
        self.teacher_points: AttentionPoints | None = None

    @classmethod
    def run_kwargs(cls, run: RunInputs) -> dict:
        """The teacher, and with `uses_attention` the attention points of student and teacher (the
        configured ones, else their families' defaults)."""
        teacher, teacher_info = run.teacher()
        kwargs = {**super().run_kwargs(run), "teacher": teacher}
        if cls.uses_attention:
            kwargs["attention_layers"] = {"student": families.attention_layers(run.cfg.student, run.student_arch),
                                          "teacher": families.attention_layers(run.cfg.teacher, teacher_info)}
        return kwargs

    def use_attention(self, attention_layers: dict, beta: float, image_size: int) -> None:
        """Capture the attention points attention transfer compares (`attention_layers`: the module
        names for "student" and "teacher", from `zskt.models.families.attention_layers`) and check
        that they pair. With `beta` 0 there is no attention term and nothing is captured: any pair
        of networks works."""
        if beta == 0:
            return
        points = {}
        for role, net in (("student", self.student), ("teacher", self.teacher)):
            layers = attention_layers.get(role)
            if not layers:
                raise UserError(f"the {role} network has no default attention points (a torchvision or custom "
                                f"network): set {role}.attention_layers=[...] (module names from its named_modules()), "
                                "or run without attention transfer (method.beta=0)")
            points[role] = AttentionPoints(net, layers, role)
        pair_points(points["student"], points["teacher"], image_size)
        self.student_points, self.teacher_points = points["student"], points["teacher"]

    def student_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The student's logits and attention points (none when the method runs without AT)."""
        return self.student_points(x) if self.student_points is not None else (self.student(x), [])

    def teacher_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The teacher's logits and attention points (none when the method runs without AT)."""
        return self.teacher_points(x) if self.teacher_points is not None else (self.teacher(x), [])

    def train(self, mode: bool = True):
        # Lightning flips every submodule back to train mode after each evaluation;
        # the teacher must keep its BN running statistics.
        super().train(mode)
        self.teacher.eval()
        return self

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        images, labels = batch
        self.teacher_accuracy.update(self.teacher(self.to_input(images)), labels)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.log("teacher/test_acc", self.teacher_accuracy.compute() * 100.0, sync_dist=True)
        self.teacher_accuracy.reset()
