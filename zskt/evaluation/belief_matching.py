"""Adversarial belief matching (Algorithm 2 of the paper; SPEC section 4, last paragraph).

Network A is the student, B the teacher. On test images both classify alike (class i), each
of the C-1 other classes j is a target: starting from the clean normalised image, take K raw
gradient steps x <- x - xi * grad_x CE(A(x), j) (no sign, no clamp) and record p_j under A and
under B before every step (k = 0 is the clean image). The mean transition error (MTE) is the
mean of |p_j^A - p_j^B| over images, targets and k = 0..K-1.

The functions below are pure (tensors in, tensors out); `BeliefMatching` is the `method=abm`
module that `zskt.run` drives: it runs them after the test-accuracy pass and writes the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from tqdm import tqdm

from zskt.checkpoints import atomic_write_text
from zskt.errors import UserError
from zskt.methods.base import DistillationModule, scaled
from zskt.validation import check

STEP_ON = ("student", "teacher")
CSV_COLUMNS = ("k", "p_student", "p_student_stderr", "p_teacher", "p_teacher_stderr")


# ---------------------------------------------------------------------------- pure functions
@torch.no_grad()
def agreeing_images(student: nn.Module, teacher: nn.Module, images: Tensor, n_images: int, seed: int,
                    batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Indices into `images` of the first `n_images` of a `seed`-shuffled order on which both
    networks predict the same class, and that class. A one-line `UserError` if fewer exist."""
    predictions = [(student(chunk).argmax(1), teacher(chunk).argmax(1)) for chunk in images.split(batch_size)]
    student_pred = torch.cat([s for s, _ in predictions]).cpu()
    teacher_pred = torch.cat([t for _, t in predictions]).cpu()
    # the shuffle is drawn on the CPU from its own generator: the same subset on every device
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    chosen = order[(student_pred == teacher_pred)[order]]
    if len(chosen) < n_images:
        raise UserError(f"only {len(chosen)} of the {len(images)} test images get the same class from student and "
                        f"teacher, fewer than method.n_images={n_images}: lower method.n_images")
    chosen = chosen[:n_images]
    return chosen, student_pred[chosen]


def other_classes(classes: Tensor, num_classes: int) -> Tensor:
    """(N, C-1): for each image, every class but its own, in increasing order (the targets j != i)."""
    every = torch.arange(num_classes, device=classes.device).expand(len(classes), num_classes)
    return every[every != classes[:, None]].view(len(classes), num_classes - 1)


def _target_probability(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.detach().softmax(1).gather(1, targets[:, None]).squeeze(1)


def _walk(stepping: nn.Module, watching: nn.Module, x: Tensor, targets: Tensor, steps: int,
          xi: float) -> tuple[Tensor, Tensor]:
    """One batch of samples (an image and one target each): p_target under `stepping` and
    `watching` before each of `steps` gradient steps taken on `stepping`'s cross-entropy, (M, K)."""
    p_stepping, p_watching = [], []
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        logits = stepping(x)
        # the SUM of per-sample losses: each sample's input gradient is its own, not divided by
        # the batch size (eval-mode BN keeps the samples independent of each other)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, targets, reduction="sum"), x)
        with torch.no_grad():
            p_stepping.append(_target_probability(logits, targets))
            p_watching.append(_target_probability(watching(x), targets))
            x = x - xi * grad
    return torch.stack(p_stepping, 1), torch.stack(p_watching, 1)


def transition_curves(student: nn.Module, teacher: nn.Module, images: Tensor, classes: Tensor, num_classes: int,
                      steps: int, xi: float, step_on: str = "student", batch_images: int = 50,
                      progress: Callable[[int], object] | None = None) -> tuple[Tensor, Tensor]:
    """p_j under the student and under the teacher, each (N, C-1, K) on the CPU, for the N
    `images` (normalised, classified `classes` by both nets), their C-1 targets j (in
    `other_classes` order) and k = 0..K-1 (`steps` = K; k = 0 is the clean image).

    Steps follow the student's gradient, or the teacher's with `step_on="teacher"`. The C-1
    targets of `batch_images` images form one batch. Both networks must be in eval mode; runs
    with gradients enabled, so never call it under `torch.inference_mode`. `progress(n)` is
    called after every batch of n images (e.g. a tqdm bar's `update`).
    """
    if step_on not in STEP_ON:
        raise ValueError(f"step_on must be one of {STEP_ON}, not {step_on!r}")
    if student.training or teacher.training:
        raise ValueError("belief matching needs both networks in eval mode (BN running statistics)")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("belief matching needs input gradients: run it outside torch.inference_mode "
                           "(Trainer(inference_mode=False))")
    stepping, watching = (student, teacher) if step_on == "student" else (teacher, student)
    targets = other_classes(classes.to(images.device), num_classes)
    curves = []
    with torch.enable_grad():
        for batch, batch_targets in zip(images.split(batch_images), targets.split(batch_images)):
            x = batch.repeat_interleave(num_classes - 1, dim=0)  # image-major, matching targets.view(-1)
            p = _walk(stepping, watching, x, batch_targets.reshape(-1), steps, xi)
            curves.append([c.view(len(batch), num_classes - 1, steps).cpu() for c in p])
            if progress is not None:
                progress(len(batch))
    p_stepping, p_watching = (torch.cat(c) for c in zip(*curves))
    return (p_stepping, p_watching) if step_on == "student" else (p_watching, p_stepping)


def mean_and_stderr(per_image: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over images (dim 0) and its standard error, std (n-1) / sqrt(N)."""
    per_image = per_image.double()
    return per_image.mean(0), per_image.std(0) / math.sqrt(len(per_image))


def mean_transition_error(p_student: Tensor, p_teacher: Tensor) -> tuple[float, float]:
    """MTE = mean over images, targets and k of |p_student - p_teacher|, and its standard error.

    The error is over images: each image's mean over its targets and steps is one sample (the
    targets and steps of an image are not independent draws). Needs at least 2 images.
    """
    mte, stderr = mean_and_stderr((p_student - p_teacher).abs().mean(dim=(1, 2)))
    return float(mte), float(stderr)


def curve_summary(p: Tensor) -> tuple[Tensor, Tensor]:
    """Transition curve (K,) of one network: mean p_j over images and targets at each k, and its
    standard error over images (each image's mean over its targets is one sample)."""
    return mean_and_stderr(p.mean(dim=1))


def curves_csv(p_student: Tensor, p_teacher: Tensor) -> str:
    """The CSV text of both transition curves: one row per k, columns `CSV_COLUMNS`."""
    (s_mean, s_err), (t_mean, t_err) = curve_summary(p_student), curve_summary(p_teacher)
    rows = [",".join(CSV_COLUMNS)]
    rows += [f"{k},{s_mean[k]:.6f},{s_err[k]:.6f},{t_mean[k]:.6f},{t_err[k]:.6f}" for k in range(len(s_mean))]
    return "\n".join(rows) + "\n"


def plot_curves(p_student: Tensor, p_teacher: Tensor, plot_k: int, labels: tuple[str, str],
                title: str) -> Figure:
    """The paper's Figure 4: both transition curves against k = 0..plot_k with +-2 standard-error bands."""
    # a bare Figure, not pyplot: no global backend or figure registry to manage
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    k = torch.arange(min(plot_k, p_student.shape[2] - 1) + 1)
    for p, label, color in ((p_student, labels[0], "tab:blue"), (p_teacher, labels[1], "tab:orange")):
        mean, err = (v[: len(k)].numpy() for v in curve_summary(p))
        ax.plot(k.numpy(), mean, color=color, label=label)
        ax.fill_between(k.numpy(), mean - 2 * err, mean + 2 * err, color=color, alpha=0.25, linewidth=0)
    ax.set(xlabel="k (gradient steps)", ylabel="$p_j$ (target-class probability)", title=title,
           xlim=(0, int(k[-1])), ylim=(0, 1))
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- the method
class BeliefMatching(DistillationModule):
    """`method=abm`: test accuracy of student and teacher (the usual test pass), then belief
    matching on the test images collected during that pass.

    The Trainer runs with `inference_mode=False` (see `trainer_limits`), so gradients can be
    enabled inside `on_test_epoch_end`; the walk runs in fp32 whatever the trainer's precision.
    """

    trains = False
    uses_train_data = False

    def __init__(self, name: str, student: dict, teacher: nn.Module, student_checkpoint: str | None,
                 output_dir: str, k: int, xi: float, n_images: int, seed: int, step_on: str, batch_images: int,
                 plot_k: int, budget_scale: float = 1.0, channels_last: bool = True, compile: bool = False) -> None:
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

    def trainer_limits(self) -> dict:
        return {**super().trainer_limits(), "inference_mode": False}

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
        num_classes = self.student.num_classes
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
                        "transition_curves": "transition_curves.csv", "plot": "transition_curves.png"}
        self.log_dict({"abm/mte": mte, "abm/mte_stderr": stderr})
        if self.trainer.is_global_zero:
            self._write_outputs(p_student, p_teacher, mte, stderr)
        print(f"zskt: belief matching: MTE {mte:.4f} +- {stderr:.4f} (standard error over {self.n_images} images, "
              f"K={self.k}, xi={self.xi}, steps on the {self.step_on})")

    def _write_outputs(self, p_student: Tensor, p_teacher: Tensor, mte: float, stderr: float) -> None:
        atomic_write_text(curves_csv(p_student, p_teacher), self.output_dir / "transition_curves.csv")
        labels = (f"student WRN-{self.student.depth}-{self.student.width}",
                  f"teacher WRN-{self.teacher.depth}-{self.teacher.width}")
        title = f"steps on the {self.step_on}: MTE {mte:.3f} $\\pm$ {stderr:.3f}"
        fig = plot_curves(p_student, p_teacher, self.plot_k, labels, title)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.output_dir / "transition_curves.png", dpi=150)
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.experiment.add_figure("abm/transition_curves", fig)
