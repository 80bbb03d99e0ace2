"""DeepInversion (Yin et al., CVPR 2020, "Dreaming to distill"), with its adaptive competition term
(ADI) on by default, as the data-free KD benchmark runs it (docs/method.md#deepinversion).

No generator: each synthesis call optimises a batch of images directly, from x ~ N(0, I) in the
normalised input space, towards classes y drawn uniformly (sorted), with a new Adam every call:

    L = w_bn L_BN(x^) + w_oh CE(t(x^), y) - w_adv JS_tau(x^) + w_tv TV(x) + w_l2 ||x||_2

x^ is x rolled by a random (d1, d2) in [-jitter, jitter]^2 and flipped with p = 0.5, one draw per step
for the whole batch; JS is the Jensen-Shannon divergence of student and teacher at tau = 3 with
NVlabs' clamping (zskt.synthesis.losses.jensen_shannon); the student is in eval mode and gets no
weight gradients; after every step each channel is clamped to the normalised image of [0, 1]. The
finished batch (`keep`: `last`, the final iterate, as the benchmark's code stores it; `best`, the
iterate of lowest loss, which that code meant to keep) goes into the memory bank as 8-bit pixels.

A benchmark epoch (one Lightning epoch): one synthesis call, then `kd_steps` student steps, each on the
bank's next batch under the CIFAR train transform (zero-pad 4, random crop, flip, per image), loss
tau^2 KL(p_T || p_S), tau = 20. An iteration (the progress bar's unit) is one student step. The
bank, the run's random streams and the optimisers are checkpoint state, so a killed run resumes exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zskt.data.sources import IMAGE_SIZE
from zskt.errors import UserError
from zskt.methods.datafree import MemoryBankModule, epoch_plan, frozen, shrunk
from zskt.synthesis.augment import crop_flip, roll_flip
from zskt.synthesis.losses import fp32, jensen_shannon, total_variation
from zskt.synthesis.memory_bank import MemoryBank
from zskt.validation import check

KEEP = ("last", "best")


class DeepInversion(MemoryBankModule):
    """Images optimised against the teacher's BN statistics, then distilled from a growing memory bank."""

    def __init__(
        self,
        name: str,
        student: dict,
        teacher: torch.nn.Module,
        normalization: dict,
        epochs: int,
        kd_steps: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        lr_min: float,
        temperature: float,
        synthesis_steps: int,
        synthesis_lr: float,
        synthesis_betas: list[float],
        bn_weight: float,
        oh_weight: float,
        adv_weight: float,
        adv_temperature: float,
        js_clamp: list[float],
        tv_weight: float,
        l2_weight: float,
        jitter: int,
        crop_padding: int,
        keep: str,
        eval_every: int,
        budget_scale: float,
        noise_seed: int,
        channels_last: bool,
        compile: bool,
    ) -> None:
        super().__init__(name, student, teacher, normalization, channels_last, compile)
        if keep not in KEEP:
            raise UserError(f"method.keep={keep} is invalid: choose one of {', '.join(KEEP)}")
        for key in ("epochs", "kd_steps", "batch_size", "lr_min", "temperature", "synthesis_steps", "synthesis_lr",
                    "synthesis_betas", "bn_weight", "oh_weight", "adv_weight", "adv_temperature", "js_clamp",
                    "tv_weight", "l2_weight", "jitter", "crop_padding", "eval_every", "noise_seed"):
            check(f"method.{key}", locals()[key])
        self.save_hyperparameters(ignore=["teacher"])
        self.automatic_optimization = False
        self.max_epochs, factor = epoch_plan(epochs, budget_scale)
        self.steps_per_epoch = shrunk(kd_steps, factor)
        self.inversion_steps = shrunk(synthesis_steps, factor)
        self.total_iterations = self.max_epochs * self.steps_per_epoch
        self.eval_every = min(eval_every, self.max_epochs)
        self.noise = torch.Generator()    # initial images, labels, jitter
        self.augment = torch.Generator()  # the student's batches' crops and flips
        self.bank = MemoryBank(noise_seed)
        self.iteration = 0  # student steps taken

    # ------------------------------------------------------------------ one batch
    def training_step(self, batch, batch_idx: int) -> None:
        hp = self.hparams
        opt_s = self.optimizers()
        if self.iteration % self.steps_per_epoch == 0:  # the epoch's synthesis call
            loss_synthesis = self.synthesize()
            self.log("train/synthesis_loss", loss_synthesis, prog_bar=True, batch_size=1)
        pixels = crop_flip(self.bank.next_batch(hp.batch_size, self.device), hp.crop_padding, self.augment)
        loss_s = self.distill(self.normalize(pixels), opt_s, hp.temperature)
        self.iteration += 1
        if self.iteration % self.steps_per_epoch == 0:  # the epoch ends: the cosine steps
            self.lr_schedulers().step()
        self.log("train/student_loss", loss_s, prog_bar=True, batch_size=1)
        self.log("train/bank_images", float(len(self.bank)), batch_size=1)
        self.log_iteration_axis()

    def synthesize(self) -> Tensor:
        """One synthesis call (module docstring): a batch into the memory bank; returns its last loss."""
        hp = self.hparams
        self.student.eval()
        shape = (hp.batch_size, len(self.pixel_mean), IMAGE_SIZE, IMAGE_SIZE)
        x = torch.randn(shape, generator=self.noise).to(self.device).requires_grad_(True)
        y = torch.randint(self.num_classes, (hp.batch_size,), generator=self.noise).sort().values.to(self.device)
        low, high = (0 - self.mean) / self.std, (1 - self.mean) / self.std  # [0, 1] in the normalised space
        opt = torch.optim.Adam([x], lr=hp.synthesis_lr, betas=tuple(hp.synthesis_betas))
        best_loss, best = math.inf, None
        with frozen(self.student):
            for _ in range(self.inversion_steps):
                x_hat = self.to_input(roll_flip(x, hp.jitter, self.noise))
                with self.bn_statistics.capture():
                    teacher_logits = self.teacher(x_hat)
                loss = hp.bn_weight * self.bn_statistics.loss() + hp.oh_weight * F.cross_entropy(fp32(teacher_logits), y)
                if hp.adv_weight > 0:
                    student_logits = self.student(x_hat)
                    loss = loss - hp.adv_weight * jensen_shannon(student_logits, teacher_logits, hp.adv_temperature,
                                                                 tuple(hp.js_clamp))
                if hp.tv_weight > 0:
                    loss = loss + hp.tv_weight * total_variation(x)
                if hp.l2_weight > 0:
                    loss = loss + hp.l2_weight * torch.linalg.vector_norm(x)
                if hp.keep == "best" and float(loss) < best_loss:  # this iterate, before its update
                    best_loss, best = float(loss), x.detach().clone()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, high), low))
        self.bank.add(self.denormalize(best if best is not None else x.detach()))
        self.student.train()
        return loss.detach()

    # ------------------------------------------------------------------ bookkeeping
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["iteration"] = self.iteration

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.iteration = int(checkpoint["iteration"])

    def configure_optimizers(self):
        hp = self.hparams
        opt_s, sched_s = self.student_optimizer(hp.lr, hp.momentum, hp.weight_decay, hp.lr_min, self.max_epochs)
        return [opt_s], [{"scheduler": sched_s, "name": "lr/student"}]
