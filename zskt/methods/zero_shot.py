"""Zero-shot knowledge transfer (Algorithm 1 of Micaelli & Storkey, 2019), and its modified variant.

No training data: a generator G is trained adversarially to produce images on which the
student S and the frozen teacher T disagree, and S learns to match T on them.

Per iteration (docs/method.md#zero-shot-transfer):
  1. draw z ~ N(0, I); x = G(z)
  2. generator step: loss = -KL(T(x) || S(x)), student toggled off, clip, Adam step
  3. n_S student steps on the batch `student_batch` chooses; the teacher's logits and
     attention maps are computed once per batch without gradients (for `pre_update` they are
     the generator step's own teacher outputs, detached: that step already showed the teacher
     this very batch); loss = KL + beta * sum AT, clip, Adam step
  4. both cosine schedules step

`student_batch`:
  - `pre_update`  (the study's): the x of step 1, detached (made before G's update);
  - `post_update` (the authors' code): G(z) regenerated with the updated G, same z;
  - `fresh`       (modified zero-shot): a new z and batch from the updated G for every
                  student step, each used once.

A Lightning "epoch" is `eval_every` iterations (one test evaluation + checkpoint; by default a tenth of
the run, at most 1,000: `default_eval_every`), the last
one just the remainder, so the run stops after exactly `iterations` iterations. Each evaluation
also records two means over the block's generated batches: the teacher's top-class probability
and the share of a batch in its most frequent teacher class. At a share of `collapse_class_share`
or more, from the second evaluation on, the generator has collapsed onto a class or two (the
student then learns little beyond them), and the run says so once. With `restart_after` N, a
guard outside the paper's algorithm (off unless set) acts sooner: after N iterations in a row
whose batch fell at least `restart_class_share` in one teacher class it re-initialises the
generator and its optimiser, before the student has learnt much from one class. With
`balance_weight` w > 0, another departure (off unless set), the generator's loss gains DFQ's class
prior, w * sum_c pbar_c log pbar_c over the batch-mean teacher softmax pbar: a batch in one class
costs w * log C more than a balanced one, so the generator is pulled away from collapse all along
rather than restarted after it. Under manual
optimisation `global_step` counts optimiser steps, n_G + n_S per iteration.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from zskt.data.sources import IMAGE_SIZE
from zskt.errors import UserError
from zskt.losses import generator_loss, zero_shot_student_loss
from zskt.methods.base import DistillationModule, scaled
from zskt.models.generator import Generator
from zskt.models.size_and_layout import set_channels_last
from zskt.rng import PicklableGenerators
from zskt.synthesis.losses import class_balance
from zskt.validation import check

STUDENT_BATCHES = ("pre_update", "post_update", "fresh")
# method.precision_mix: which parts of an iteration run in bf16 autocast (the rest in fp32)
PRECISION_MIXES = {
    "off": {},                                                 # the trainer's precision throughout
    "student_bf16": {"student_steps": True},                   # generator step in fp32, student steps in bf16
    "generator_fp32": {"generator_step": True, "student_steps": True, "generator": False},  # bf16, generator fp32
    "fp32_compiled": {},                                       # fp32, networks and generator torch.compile'd
}
log = logging.getLogger("zskt")


def teacher_view(teacher_logits: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The teacher's mean top-class probability on a generated batch, and the share of the batch in
    its most frequent class (counted by comparison rather than bincount: no device sync)."""
    teacher_max_prob = teacher_logits.float().softmax(1).amax(1).mean()
    classes = teacher_logits.argmax(1)
    counts = (classes[:, None] == torch.arange(num_classes, device=classes.device)).sum(0)
    return teacher_max_prob, counts.max() / classes.numel()


def default_eval_every(iterations: int) -> int:
    """The evaluation period when method.eval_every is null: a tenth of the run, at most 1,000 iterations
    (the study's period), so a run of any length gets about ten evaluations and a long one one every 1,000."""
    return max(1, min(1000, iterations // 10))


class ZeroShot(PicklableGenerators, DistillationModule):
    """Adversarial belief matching between a generator, a student and a frozen teacher."""

    trains = True
    uses_attention = True  # `run_kwargs` passes `attention_layers`
    uses_train_data = False
    logs_in_iterations = True

    def __init__(
        self,
        name: str,
        student: dict,
        teacher: torch.nn.Module,
        attention_layers: dict,
        generator: dict,
        iterations: int,
        batch_size: int,
        n_generator_steps: int,
        n_student_steps: int,
        student_lr: float,
        generator_lr: float,
        beta: float,
        temperature: float,
        grad_clip: float,
        student_batch: str,
        eval_every: int | None,
        budget_scale: float,
        noise_seed: int,
        channels_last: bool,
        compile: bool,
        collapse_class_share: float | None = None,
        restart_after: int | None = None,
        restart_class_share: float = 0.9,
        precision_mix: str = "off",
        balance_weight: float = 0.0,
    ) -> None:
        if precision_mix not in PRECISION_MIXES:
            raise UserError(f"method.precision_mix={precision_mix} is invalid: choose one of {', '.join(PRECISION_MIXES)}")
        compile = compile or precision_mix == "fp32_compiled"
        super().__init__(name, student, teacher, channels_last, compile)
        if student_batch not in STUDENT_BATCHES:
            raise UserError(f"method.student_batch={student_batch} is invalid: choose one of {', '.join(STUDENT_BATCHES)}")
        for key, value in (("batch_size", batch_size), ("n_generator_steps", n_generator_steps),
                           ("n_student_steps", n_student_steps), ("eval_every", eval_every), ("iterations", iterations),
                           ("student_lr", student_lr), ("generator_lr", generator_lr), ("beta", beta),
                           ("temperature", temperature), ("grad_clip", grad_clip),
                           ("collapse_class_share", collapse_class_share),
                           ("restart_after", restart_after), ("restart_class_share", restart_class_share),
                           ("balance_weight", balance_weight)):
            check(f"method.{key}", value)
        self.save_hyperparameters(ignore=["teacher"])
        self.automatic_optimization = False
        # channels_last like the networks it feeds: its convolutions run faster so (docs/performance.md)
        # and its output needs no copy
        self.generator = set_channels_last(Generator(**generator), channels_last)
        if compile:
            self.generator.compile()
        self.bf16_parts = PRECISION_MIXES[precision_mix]
        self.total_iterations = scaled(iterations, budget_scale)
        self.eval_every = min(eval_every or default_eval_every(self.total_iterations), self.total_iterations)
        self.max_epochs = math.ceil(self.total_iterations / self.eval_every)
        self.noise = torch.Generator()
        self.use_attention(attention_layers, beta, IMAGE_SIZE)
        # over an evaluation block's generated batches: the teacher's mean top-class probability, and
        # the mean share of a batch in its most frequent teacher class (the collapse signal)
        self.teacher_confidence = MeanMetric()
        self.top_class_share = MeanMetric()
        # the restart guard: iterations in a row with a collapsed batch, and the iterations it restarted at
        self.collapsed_in_a_row = 0
        self.restarted_at: list[int] = []

    # ------------------------------------------------------------------ Algorithm 1
    def training_step(self, batch, batch_idx: int) -> None:
        hp = self.hparams
        opt_g, opt_s = self.optimizers()
        sched_g, sched_s = self.lr_schedulers()

        # 1. z ~ N(0, I), x = G(z)
        z = self.draw_noise()

        # 2. generator step(s): maximise the disagreement; no student weight gradients
        with self.toggled_optimizer(opt_g), self.precision_of("generator_step"):
            for _ in range(hp.n_generator_steps):
                x = self.generate(z)
                teacher_logits, teacher_features = self.teacher_with_features(x)
                student_logits = self.student(x)
                loss_g = generator_loss(student_logits, teacher_logits, hp.temperature)
                if hp.balance_weight:  # the opt-in class prior (module docstring); 0: the paper's loss exactly
                    loss_g = loss_g + hp.balance_weight * class_balance(teacher_logits)
                opt_g.zero_grad()
                self.manual_backward(loss_g)
                self.clip_gradients(opt_g, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
                opt_g.step()
        seen = (teacher_logits, teacher_features) if hp.student_batch == "pre_update" else None

        # 3. student steps: match the teacher on generated batches, never back-propagating into G
        with self.precision_of("student_steps"):
            loss_s = self.student_steps(z, x.detach(), seen, opt_s)

        # 4. both cosine schedules
        sched_g.step()
        sched_s.step()

        teacher_max_prob, top_class_share = teacher_view(teacher_logits.detach(), self.num_classes)
        self.teacher_confidence.update(teacher_max_prob)
        self.top_class_share.update(top_class_share)
        if hp.restart_after is not None:
            self.restart_if_collapsed(top_class_share)
        self.log_iteration(loss_g, loss_s, teacher_max_prob, top_class_share, student_logits.detach())

    def student_steps(self, z: Tensor, x_pre_update: Tensor, seen: tuple[Tensor, list[Tensor]] | None, opt_s) -> Tensor:
        """Step 3 of Algorithm 1: n_S student steps on the batches `student_batch` chooses; the last loss."""
        hp = self.hparams
        for step in range(hp.n_student_steps):
            if step == 0 or hp.student_batch == "fresh":
                x_s = self.batch_for_student(z, x_pre_update)
                t_logits, t_features = self.teacher_targets(x_s, seen)
            s_logits, s_features = self.student_with_features(x_s)
            loss_s = zero_shot_student_loss(s_logits, t_logits, s_features, t_features, hp.beta, hp.temperature)
            opt_s.zero_grad()
            self.manual_backward(loss_s)
            self.clip_gradients(opt_s, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
            opt_s.step()
        return loss_s

    def precision_of(self, part: str):
        """Autocast to bf16 for the parts `method.precision_mix` runs in bf16; fp32 for the other parts.
        With the mix `off` the trainer's precision applies unchanged."""
        if not self.bf16_parts:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_parts.get(part, False))

    def draw_noise(self) -> Tensor:
        """z ~ N(0, I) from the run's own (checkpointed) random stream."""
        z = torch.randn(self.hparams.batch_size, self.hparams.generator["z_dim"], generator=self.noise)
        return z.to(self.device)

    def generate(self, z: Tensor) -> Tensor:
        with self.precision_of("generator"):
            return self.to_input(self.generator(z))

    def batch_for_student(self, z: Tensor, x_pre_update: Tensor) -> Tensor:
        """The batch the student trains on next, per method.student_batch (see the module docstring)."""
        mode = self.hparams.student_batch
        if mode == "pre_update":
            return x_pre_update
        with torch.no_grad():
            return self.generate(z if mode == "post_update" else self.draw_noise())

    def teacher_targets(self, x: Tensor, seen: tuple[Tensor, list[Tensor]] | None) -> tuple[Tensor, list[Tensor]]:
        """The teacher's logits and attention points on `x`, without gradients. `seen` is the generator
        step's teacher output when `x` is that step's batch (pre_update): reused, detached, rather
        than paying a second forward pass for the same numbers."""
        if seen is not None:
            logits, features = seen
            return logits.detach(), [f.detach() for f in features]
        with torch.no_grad():
            return self.teacher_with_features(x)

    def log_iteration(self, loss_g: Tensor, loss_s: Tensor, teacher_max_prob: Tensor, top_class_share: Tensor,
                      student_logits: Tensor) -> None:
        # tensors go to self.log as they are: Lightning reads them only at logging intervals
        self.log("train/generator_loss", loss_g, prog_bar=True, batch_size=1)
        self.log("train/student_loss", loss_s, prog_bar=True, batch_size=1)
        self.log("train/teacher_max_prob", teacher_max_prob, batch_size=1)
        self.log("train/top_class_share", top_class_share, batch_size=1)
        self.log("train/student_max_prob", student_logits.float().softmax(1).amax(1).mean(), batch_size=1)
        self.log_iteration_axis()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.state.fn == "fit":
            self.report_collapse()

    def add_to_evaluation(self, evaluation: dict) -> None:
        """The block's generated batches: the teacher's mean top probability and the collapse signal."""
        if not self.teacher_confidence.update_called:
            return
        # all ranks: compute syncs under DDP
        confidence, share = float(self.teacher_confidence.compute()), float(self.top_class_share.compute())
        self.teacher_confidence.reset()
        self.top_class_share.reset()
        evaluation.update(teacher_max_prob=round(confidence, 4), top_class_share=round(share, 4))

    def evaluation_line(self, evaluation: dict) -> str:
        line = f"iteration {self.iteration}/{self.total_iterations}: student test accuracy {evaluation['test_acc']:.2f}%"
        if "top_class_share" in evaluation:
            line += f", top_class_share {evaluation['top_class_share']:.2f} (collapse signal)"
        return line

    def restart_if_collapsed(self, top_class_share: Tensor) -> None:
        """The restart guard (see the module docstring). A collapsed generator's loss (-KL) has no slope
        left to climb, and every student step on its one-class batches teaches the student one class. The
        new weights come from a seed fixed by the run's noise seed and the iteration, and the share is
        averaged over DDP ranks, so every rank restarts alike and a resumed run repeats it; the student,
        the schedules and the noise stream go on."""
        hp = self.hparams
        share = float(self.trainer.strategy.reduce(top_class_share, reduce_op="mean"))
        self.collapsed_in_a_row = self.collapsed_in_a_row + 1 if share >= hp.restart_class_share else 0
        if self.collapsed_in_a_row < hp.restart_after:
            return
        self.collapsed_in_a_row = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.noise_seed * 1_000_003 + self.iteration)
            fresh = Generator(**hp.generator)
        self.generator.load_state_dict(fresh.state_dict())
        self.trainer.optimizers[0].state.clear()  # the generator's Adam moments belong to the old weights
        self.restarted_at.append(self.iteration)
        if self.trainer.is_global_zero:
            log.info(f"zskt: the generator collapsed at iteration {self.iteration} (at least {hp.restart_class_share:.0%} "
                     f"of its batch in one teacher class for {hp.restart_after} iterations in a row): re-initialised it "
                     "and its optimiser (method.restart_after)")

    def extra_results(self) -> dict:
        return {"generator_restarts": len(self.restarted_at), "generator_restarted_at": list(self.restarted_at)}

    def report_collapse(self) -> None:
        """Say once when the generated batches look collapsed (see the module docstring): at the first
        evaluation whose class share reaches the threshold. Read from `evaluations`, which the checkpoint
        keeps, so a resumed run does not say it again."""
        threshold = self.hparams.collapse_class_share
        # not on the first block: from random weights a generator's batches often fall mostly in a class
        # or two before they spread out
        shares = [e["top_class_share"] for e in self.evaluations[1:] if "top_class_share" in e]
        if threshold is None or not shares or shares[-1] < threshold or any(s >= threshold for s in shares[:-1]):
            return
        share = shares[-1]
        if self.trainer.is_global_zero:
            log.warning(
                f"zskt: warning: the generator looks collapsed at iteration {self.iteration}: on average "
                f"{share:.0%} of a generated batch fell in one teacher class over the last evaluation block "
                f"(method.collapse_class_share={threshold}), so the student sees little of the other classes; "
                "try another seed, or method.generator_lr / method.batch_size (README, Quick start)")

    # ------------------------------------------------------------------ bookkeeping
    def budget(self, world_size: int, train_images: int) -> dict:
        hp = self.hparams
        # student optimiser steps only; the generator step's pass through the student adds batch_size more
        return {"iterations": self.total_iterations, "budget_scale": hp.budget_scale,
                "student_images": self.student_images(self.total_iterations, world_size)}

    @property
    def iteration(self) -> int:
        """Completed zero-shot iterations (global_step counts optimiser steps)."""
        hp = self.hparams
        return self.global_step // (hp.n_generator_steps + hp.n_student_steps)

    def trainer_kwargs(self) -> dict:
        # the loader is rebuilt every epoch so the last one holds just the remaining iterations
        return {**super().trainer_kwargs(), "check_val_every_n_epoch": 1, "reload_dataloaders_every_n_epochs": 1}

    def train_dataloader(self) -> DataLoader:
        # one placeholder item per iteration (the data is generated); under DDP Lightning
        # shards it across ranks, so every rank runs the same number of iterations
        remaining = self.total_iterations - self.iteration
        return DataLoader(range(min(self.eval_every, remaining) * self.trainer.world_size), batch_size=None)

    def setup(self, stage: str) -> None:
        # every rank draws its own noise (the originals' distributed runs all drew the same)
        self.noise.manual_seed(self.hparams.noise_seed + self.global_rank)

    def images_so_far(self) -> int:
        return self.student_images(self.iteration, self.trainer.world_size)

    def student_images(self, iterations: int, world_size: int) -> int:
        """Images the student takes optimiser steps on in `iterations` iterations on `world_size` devices."""
        hp = self.hparams
        return iterations * hp.n_student_steps * hp.batch_size * world_size

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # Lightning saves no RNG state: without this a resumed run draws a different noise stream
        states = self.all_gather(self.noise.get_state().to(self.device)).cpu()
        checkpoint["noise_states"] = states if states.dim() == 2 else states[None]
        checkpoint["restart_guard"] = {"collapsed_in_a_row": self.collapsed_in_a_row, "restarted_at": list(self.restarted_at)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        states = checkpoint["noise_states"]
        self.noise.set_state(states[min(self.global_rank, len(states) - 1)].to(torch.uint8).clone())
        guard = checkpoint.get("restart_guard", {})
        self.collapsed_in_a_row = guard.get("collapsed_in_a_row", 0)
        self.restarted_at = list(guard.get("restarted_at", []))

    def configure_optimizers(self):
        hp = self.hparams
        # in the order they step in an iteration: the generator's, then the student's
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.generator_lr)
        opt_s = torch.optim.Adam(self.student.parameters(), lr=hp.student_lr)
        # cosine annealing to 0 over the run, stepped once per iteration
        sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=self.total_iterations)
        sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=self.total_iterations)
        # the names LearningRateMonitor logs them under (else lr-Adam and lr-Adam-1)
        return [opt_g, opt_s], [{"scheduler": sched_g, "name": "lr/generator"}, {"scheduler": sched_s, "name": "lr/student"}]
