"""DFQ (Choi et al., CVPR-W 2020, "Data-free network quantization with adversarial knowledge distillation"),
as the data-free KD benchmark runs it for distillation into a smaller student (docs/method.md#dfq).

A generator G (zskt.models.pixel_generator) is trained adversarially against the student, with an
auxiliary loss that makes its batches look like the teacher's training data to the teacher:

    L_G = w_bn L_BN(x) + w_oh CE(t(x), argmax t(x)) - w_adv KL(p_T || p_S)(x) + w_bal sum_c pbar_c log pbar_c

with x = N(G(z)), pbar the batch-mean teacher softmax (the class prior: minimising the last term
maximises the batch's class entropy), KL batchmean at tau = 1 through both networks. The adversarial
term sees the real student (the Fast-Datafree copy of the harness passes the teacher there, so
its term is always zero; the CMI copy fixed that, and this is that version).

One iteration (a "round"):
  1. generator step: z ~ N(0, I); G in train mode, teacher and student in eval mode; Adam on L_G
  2. `kd_steps` student steps, each on a fresh batch N(G(z')) made without gradient (G in eval mode
     with `sample_in_eval_mode`, the CMI harness; train mode otherwise, the Fast-Datafree copy);
     loss tau^2 KL(p_T || p_S), batchmean, tau = `temperature` (1: the harness rebuilds its criterion
     with tau = 1 whatever --T says)
A benchmark epoch is `epoch_steps // kd_steps` rounds (one Lightning epoch); the student's cosine
schedule steps once per epoch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zskt.methods.base import scaled
from zskt.methods.datafree import DataFreeModule
from zskt.models.pixel_generator import PixelGenerator
from zskt.synthesis.losses import class_balance, kd_loss, one_hot_loss
from zskt.validation import check


class DFQ(DataFreeModule):
    """Adversarial generator + BN-statistics + class-prior terms; the student distils from fresh batches."""

    def __init__(
        self,
        name: str,
        student: dict,
        teacher: torch.nn.Module,
        normalization: dict,
        generator: dict,
        epochs: int,
        epoch_steps: int,
        kd_steps: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        lr_min: float,
        generator_lr: float,
        generator_betas: list[float],
        temperature: float,
        bn_weight: float,
        oh_weight: float,
        adv_weight: float,
        balance_weight: float,
        sample_in_eval_mode: bool,
        eval_every: int,
        budget_scale: float,
        noise_seed: int,
        channels_last: bool,
        compile: bool,
    ) -> None:
        super().__init__(name, student, teacher, normalization, channels_last, compile)
        for key in ("epochs", "epoch_steps", "kd_steps", "batch_size", "lr_min", "generator_lr", "generator_betas",
                    "temperature", "bn_weight", "oh_weight", "adv_weight", "balance_weight", "sample_in_eval_mode",
                    "eval_every", "noise_seed"):
            check(f"method.{key}", locals()[key])
        self.save_hyperparameters(ignore=["teacher"])
        self.automatic_optimization = False
        self.generator = PixelGenerator(self.pixel_mean, self.pixel_std, **generator)
        self.rounds_per_epoch = max(1, epoch_steps // kd_steps)
        self.total_iterations = scaled(epochs * self.rounds_per_epoch, budget_scale)
        self.max_epochs = math.ceil(self.total_iterations / self.rounds_per_epoch)
        self.eval_every = min(eval_every, self.max_epochs)
        self.noise = torch.Generator()

    # ------------------------------------------------------------------ one round
    def training_step(self, batch, batch_idx: int) -> None:
        hp = self.hparams
        opt_g, opt_s = self.optimizers()

        # 1. generator step: no student weight gradients, the student in eval mode
        self.generator.train()
        self.student.eval()
        with self.toggled_optimizer(opt_g):
            x = self.to_input(self.generator(self.draw_noise()))
            with self.bn_statistics.capture():
                teacher_logits = self.teacher(x)
            student_logits = self.student(x)
            losses = {"bn": self.bn_statistics.loss(), "oh": one_hot_loss(teacher_logits),
                      "adv": -kd_loss(student_logits, teacher_logits, 1.0),
                      "balance": class_balance(teacher_logits)}
            loss_g = (hp.bn_weight * losses["bn"] + hp.oh_weight * losses["oh"] + hp.adv_weight * losses["adv"]
                      + hp.balance_weight * losses["balance"])
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            opt_g.step()

        # 2. student steps, each on a fresh generated batch
        for _ in range(hp.kd_steps):
            loss_s = self.distill(self.sample(), opt_s, hp.temperature)

        if self.iteration % self.rounds_per_epoch == 0:  # a benchmark epoch ends: the cosine steps
            self.lr_schedulers().step()
        self.log("train/generator_loss", loss_g.detach(), prog_bar=True, batch_size=1)
        self.log("train/student_loss", loss_s, prog_bar=True, batch_size=1)
        for key, value in losses.items():
            self.log(f"train/generator_{key}", value.detach(), batch_size=1)
        self.log_iteration_axis()

    def draw_noise(self) -> Tensor:
        """z ~ N(0, I) from the run's own (checkpointed) random stream."""
        return torch.randn(self.hparams.batch_size, self.generator.z_dim, generator=self.noise).to(self.device)

    def sample(self) -> Tensor:
        """A batch for the student: N(G(z)) without gradient."""
        self.generator.train(not self.hparams.sample_in_eval_mode)
        with torch.no_grad():
            x = self.to_input(self.generator(self.draw_noise()))
        self.generator.train()
        return x

    # ------------------------------------------------------------------ bookkeeping
    @property
    def iteration(self) -> int:
        """Completed rounds (global_step counts optimiser steps: 1 + kd_steps per round)."""
        return self.global_step // (1 + self.hparams.kd_steps)

    def epoch_batches(self) -> int:
        # the epoch's remaining rounds (all of them, unless resumed from a mid-epoch checkpoint)
        done = self.iteration
        return min(self.rounds_per_epoch - done % self.rounds_per_epoch, self.total_iterations - done)

    def student_images(self, iterations: int, world_size: int) -> int:
        return iterations * self.hparams.kd_steps * self.hparams.batch_size * world_size

    def random_streams(self) -> dict[str, torch.Generator]:
        return {"noise": self.noise}

    def setup(self, stage: str) -> None:
        self.noise.manual_seed(self.hparams.noise_seed + self.global_rank)

    def configure_optimizers(self):
        hp = self.hparams
        # in the order they step in a round: the generator's, then the student's
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.generator_lr, betas=tuple(hp.generator_betas))
        opt_s, sched_s = self.student_optimizer(hp.lr, hp.momentum, hp.weight_decay, hp.lr_min, self.max_epochs)
        return [opt_g, opt_s], [{"scheduler": sched_s, "name": "lr/student"}]
