"""Fast (FastDFKD: Fang et al., AAAI 2022, "Up to 100x faster data-free knowledge distillation"), as the
data-free KD benchmark's `fast_meta` runs it on CIFAR (docs/method.md#fast).

A generator's initialisation is meta-learned across synthesis calls, so that each new batch needs only
K steps (Fast-2/5/10: method=fast_2, fast_5, fast_10; method=fast is Fast-10). One call:
  - clone the meta generator G into fast weights G' (weights and BN buffers; `meta: none` adapts G
    itself, the benchmark's `fast`); draw z ~ N(0, I) and classes y uniformly, both new each call;
    a new Adam over G' (generator_lr) and z (latent_lr)
  - K inner steps: x_k = G'_k(z_k) in [0, 1], x^_k its per-image zero-pad crop and flip, normalised;
        L_k = w_bn L_BN^lambda(x^_k) + w_oh CE(t(x^_k), y) + w_adv L_adv(x^_k)
    L_BN^lambda blends the batch's BN statistics with their moving average over earlier calls
    (momentum lambda, zskt.synthesis.bn_statistics); L_adv = -(1/B) sum_i m_i KL(p_T || p_S)_i with
    m_i = 1 where student and teacher agree on the class, on from call `warmup_epochs` (counting calls
    from 1); x_k is kept when L_k is the lowest so far (candidates x_0 .. x_{K-1})
  - the meta step (one Adam step on G, its state kept for the run, lr `meta_lr` = K * generator_lr):
    `maml` (first-order): the gradient is the sum over the K inner steps of each step's gradient with
    respect to the fast weights; `reptile`: the gradient is reptile_scale * (G - G'_K)
  - the BN moving average takes the last inner step's statistics; the kept batch goes into the memory bank.
Once, at call `reset_after` + warm-up, the generator's first Linear and first BN are re-initialised
(the benchmark's reset_l0). A benchmark epoch is one call, then (after `warmup_epochs` epochs that only
synthesise) `kd_steps` student steps from the bank under the CIFAR train transform, loss
tau^2 KL(p_T || p_S), tau = 20. An iteration (the progress bar's unit) is one student step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zskt.errors import UserError
from zskt.methods.datafree import MemoryBankModule, epoch_plan, frozen, shrunk
from zskt.models.pixel_generator import PixelGenerator
from zskt.synthesis.augment import crop_flip
from zskt.synthesis.losses import fp32, masked_adversarial
from zskt.synthesis.memory_bank import MemoryBank
from zskt.validation import check

META = ("maml", "reptile", "none")


class Fast(MemoryBankModule):
    """A meta-learned generator makes a batch in K steps; the student distils from the growing bank."""

    def __init__(
        self,
        name: str,
        student: dict,
        teacher: torch.nn.Module,
        normalization: dict,
        generator: dict,
        epochs: int,
        warmup_epochs: int,
        kd_steps: int,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        lr_min: float,
        temperature: float,
        synthesis_steps: int,
        generator_lr: float,
        latent_lr: float,
        generator_betas: list[float],
        meta: str,
        meta_lr: float | None,
        reptile_scale: float,
        bn_weight: float,
        oh_weight: float,
        adv_weight: float,
        bn_momentum: float | None,
        reset_after: int | None,
        crop_padding: int,
        eval_every: int,
        budget_scale: float,
        noise_seed: int,
        channels_last: bool,
        compile: bool,
    ) -> None:
        check("method.bn_momentum", bn_momentum)
        super().__init__(name, student, teacher, normalization, channels_last, compile, bn_momentum=bn_momentum)
        if meta not in META:
            raise UserError(f"method.meta={meta} is invalid: choose one of {', '.join(META)}")
        for key in ("epochs", "warmup_epochs", "kd_steps", "batch_size", "lr_min", "temperature", "synthesis_steps",
                    "generator_lr", "latent_lr", "generator_betas", "meta_lr", "reptile_scale", "bn_weight",
                    "oh_weight", "adv_weight", "reset_after", "crop_padding", "eval_every", "noise_seed"):
            check(f"method.{key}", locals()[key])
        if warmup_epochs >= epochs:
            raise UserError(f"method.warmup_epochs={warmup_epochs} leaves no epoch to distil in "
                            f"(method.epochs={epochs}): use method.warmup_epochs < method.epochs")
        self.save_hyperparameters(ignore=["teacher"])
        self.automatic_optimization = False
        self.generator = PixelGenerator(self.pixel_mean, self.pixel_std, **generator)
        self.max_epochs, factor = epoch_plan(epochs, budget_scale)
        scale = self.max_epochs / epochs if factor == 1.0 else 0.0
        self.warmup_epochs = min(round(warmup_epochs * scale), self.max_epochs - 1)
        self.reset_call = None if reset_after is None else round(reset_after * scale) + self.warmup_epochs
        self.steps_per_epoch = shrunk(kd_steps, factor)
        self.total_iterations = (self.max_epochs - self.warmup_epochs) * self.steps_per_epoch
        self.eval_every = min(eval_every, self.max_epochs)
        self.meta_lr = meta_lr if meta_lr is not None else synthesis_steps * generator_lr
        self.noise = torch.Generator()    # z, classes, the one-off reset
        self.augment = torch.Generator()  # the crops and flips of synthesis and of the student's batches
        self.bank = MemoryBank(noise_seed)
        self.iteration = 0  # student steps taken
        self.calls = 0      # synthesis calls made

    # ------------------------------------------------------------------ one batch
    def training_step(self, batch, batch_idx: int) -> None:
        hp = self.hparams
        opt_meta, opt_s = self.optimizers()
        distilling = self.calls >= self.warmup_epochs  # (checked before this epoch's call)
        if not distilling or self.iteration % self.steps_per_epoch == 0:  # the epoch's synthesis call
            loss_synthesis = self.synthesize(opt_meta)
            self.log("train/synthesis_loss", loss_synthesis, prog_bar=True, batch_size=1)
        if distilling:
            pixels = crop_flip(self.bank.next_batch(hp.batch_size, self.device), hp.crop_padding, self.augment)
            loss_s = self.distill(self.normalize(pixels), opt_s, hp.temperature)
            self.iteration += 1
            if self.iteration % self.steps_per_epoch == 0:  # a distilling epoch ends: the cosine steps
                self.lr_schedulers().step()
            self.log("train/student_loss", loss_s, prog_bar=True, batch_size=1)
        self.log("train/bank_images", float(len(self.bank)), batch_size=1)
        self.log_iteration_axis()

    def synthesize(self, opt_meta) -> Tensor:
        """One synthesis call (module docstring): a batch into the memory bank; returns its best loss."""
        hp = self.hparams
        self.calls += 1
        self.student.eval()
        if self.calls == self.reset_call:
            self.generator.reset_first_layers(self.noise)
        z = torch.randn(hp.batch_size, self.generator.z_dim, generator=self.noise).to(self.device).requires_grad_(True)
        y = torch.randint(self.num_classes, (hp.batch_size,), generator=self.noise).to(self.device)
        fast = self.generator.clone() if hp.meta != "none" else self.generator
        opt = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": hp.latent_lr}],
                               lr=hp.generator_lr, betas=tuple(hp.generator_betas))
        adversarial = hp.adv_weight > 0 and self.calls >= self.warmup_epochs  # the benchmark: from call 20 on (sic)
        best_loss, best = math.inf, None
        with frozen(self.student):
            for k in range(hp.synthesis_steps):
                pixels = fast.pixels(z)
                x = self.normalize(crop_flip(pixels, hp.crop_padding, self.augment))
                with self.bn_statistics.capture():
                    teacher_logits = self.teacher(x)
                loss = hp.bn_weight * self.bn_statistics.loss() + hp.oh_weight * F.cross_entropy(fp32(teacher_logits), y)
                if adversarial:
                    loss = loss + hp.adv_weight * masked_adversarial(self.student(x), teacher_logits)
                if float(loss.detach()) < best_loss:  # x_k, before the k-th update
                    best_loss, best = float(loss.detach()), pixels.detach()
                opt.zero_grad()
                self.manual_backward(loss)
                if hp.meta == "maml":  # first order: sum every inner step's gradient w.r.t. the fast weights
                    if k == 0:
                        opt_meta.zero_grad()
                    for p, q in zip(self.generator.parameters(), fast.parameters(), strict=True):
                        p.grad = q.grad.detach().clone() if p.grad is None else p.grad + q.grad
                    if k == hp.synthesis_steps - 1:
                        opt_meta.step()
                opt.step()
        self.bn_statistics.update_average()
        if hp.meta == "reptile":  # an Adam step of the meta generator towards the adapted one
            opt_meta.zero_grad()
            for p, q in zip(self.generator.parameters(), fast.parameters(), strict=True):
                p.grad = hp.reptile_scale * (p.detach() - q.detach())
            opt_meta.step()
        self.bank.add(best)
        self.student.train()
        return torch.tensor(best_loss)

    # ------------------------------------------------------------------ bookkeeping
    def epoch_batches(self) -> int:
        if self.calls < self.warmup_epochs:  # a warm-up epoch: one synthesis call, no student step
            return 1
        return self.remaining_student_steps()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["counters"] = {"iteration": self.iteration, "calls": self.calls}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.iteration, self.calls = int(checkpoint["counters"]["iteration"]), int(checkpoint["counters"]["calls"])

    def configure_optimizers(self):
        hp = self.hparams
        # the meta generator's Adam (kept for the run), then the student's SGD
        opt_meta = torch.optim.Adam(self.generator.parameters(), lr=self.meta_lr, betas=tuple(hp.generator_betas))
        opt_s, sched_s = self.student_optimizer(hp.lr, hp.momentum, hp.weight_decay, hp.lr_min,
                                                self.max_epochs - self.warmup_epochs)
        return [opt_meta, opt_s], [{"scheduler": sched_s, "name": "lr/student"}]
