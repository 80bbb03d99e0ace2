"""`method=abm`: adversarial belief matching of a trained student against its teacher
(Algorithm 2 of the paper; the mathematics in `zskt.evaluation.belief_matching`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn
from tqdm import tqdm

from zskt.errors import UserError
from zskt.evaluation.belief_matching import STEP_ON, agreeing_images, mean_transition_error, transition_curves
from zskt.evaluation.transition_files import curves_csv, plot_curves
from zskt.io import atomic_write_text
from zskt.methods.base import DistillationModule, scaled
from zskt.models.families import name_of
from zskt.rundir import TRANSITION_CURVES, TRANSITION_PLOT
from zskt.validation import check

info = rank_zero_only(logging.getLogger("zskt").info)


class BeliefMatching(DistillationModule):
    """`method=abm`: test accuracy of student and teacher (the usual test pass), then belief
    matching on the test images collected during that pass.

    The Trainer runs with `inference_mode=False` (see `trainer_kwargs`), so gradients can be
    enabled inside `on_test_epoch_end`; the walk runs in fp32 whatever the trainer's precision.
    """

    trains = False
    uses_train_data = False

    def __init__(self, name: str, student: dict, teacher: nn.Module, student_checkpoint: str | None,
                 output_dir: str, k: int, xi: float, n_images: int, seed: int, step_on: str, batch_images: int,
                 plot_k: int, budget_scale: float, channels_last: bool, compile: bool) -> None:
        super().__init__(name, student, teacher, channels_last, compile)
        if not student_checkpoint:
            raise UserError("method=abm compares a trained student with its teacher: add student.checkpoint=<its model.pt>")
        for key, value in (("k", k), ("n_images", n_images), ("batch_images", batch_images), ("plot_k", plot_k),
                           ("xi", xi)):
            check(f"method.{key}", value)
        if step_on not in STEP_ON:
            raise UserError(f"method.step_on={step_on} is invalid: choose one of {', '.join(STEP_ON)}")
        self.student_checkpoint, self.output_dir = student_checkpoint, Path(output_dir)
        # budget_scale < 1 (debug=fast) shrinks K and N to a smoke test; results.json records what ran
        self.k, self.n_images = scaled(k, budget_scale), max(2, scaled(n_images, budget_scale))
        self.xi, self.seed, self.step_on, self.budget_scale = float(xi), seed, step_on, budget_scale
        self.batch_images, self.plot_k = batch_images, plot_k
        self._test_images: list[Tensor] = []
        self.results: dict = {}

    def trainer_kwargs(self) -> dict:
        return {**super().trainer_kwargs(), "inference_mode": False}

    def budget(self, world_size: int, train_images: int) -> dict:
        return {"k": self.k, "n_images": self.n_images, "budget_scale": self.budget_scale}

    def extra_results(self) -> dict:
        return self.results

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._test_images.append(batch[0])

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        images = self.to_input(torch.cat(self._test_images))
        self._test_images = []
        num_classes = self.num_classes
        with torch.autocast(self.device.type, enabled=False):
            chosen, classes = agreeing_images(self.student, self.teacher, images, self.n_images, self.seed,
                                              self.batch_images * (num_classes - 1))
            with tqdm(total=self.n_images, desc="belief matching", unit="image") as bar:
                p_student, p_teacher = transition_curves(
                    self.student, self.teacher, images[chosen], classes, num_classes, self.k, self.xi,
                    self.step_on, self.batch_images, bar.update)
        mte, stderr = mean_transition_error(p_student, p_teacher)
        self.results = {"mte": round(mte, 6), "mte_stderr": round(stderr, 6), "mte_stderr_over": "images",
                        "k": self.k, "xi": self.xi, "n_images": self.n_images, "abm_seed": self.seed,
                        "step_on": self.step_on, "n_targets": num_classes - 1,
                        "student_checkpoint": self.student_checkpoint,
                        "transition_curves": TRANSITION_CURVES, "plot": TRANSITION_PLOT}
        self.log_dict({"abm/mte": mte, "abm/mte_stderr": stderr})
        if self.trainer.is_global_zero:
            self._write_outputs(p_student, p_teacher, mte, stderr)
        info(f"belief matching: MTE {mte:.4f} +- {stderr:.4f} (standard error over {self.n_images} images, "
              f"K={self.k}, xi={self.xi}, steps on the {self.step_on})")

    def _write_outputs(self, p_student: Tensor, p_teacher: Tensor, mte: float, stderr: float) -> None:
        atomic_write_text(curves_csv(p_student, p_teacher), self.output_dir / TRANSITION_CURVES)
        teacher = name_of(self.teacher.arch) if hasattr(self.teacher, "arch") else type(self.teacher).__name__
        labels = (f"student {name_of(self.student_arch)}", f"teacher {teacher}")
        title = f"steps on the {self.step_on}: MTE {mte:.3f} $\\pm$ {stderr:.3f}"
        fig = plot_curves(p_student, p_teacher, self.plot_k, labels, title)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.output_dir / TRANSITION_PLOT, dpi=150)
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.experiment.add_figure("abm/transition_curves", fig)
