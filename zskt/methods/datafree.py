"""What DFQ, DeepInversion and Fast share (docs/method.md#data-free-methods): a student distilled by
KD from a frozen teacher on synthesised images only, the teacher's BatchNorm-statistics hooks, the
dataset's normalisation (the synthesised images live in [0, 1] pixel space, as the teachers' training
images did), the benchmark's student optimiser, and the run's own random streams (checkpoint state).

The student's recipe (zju-vipa/Fast-Datafree datafree_kd.py): SGD with momentum and weight decay,
cosine-annealed per benchmark epoch from `lr` to `lr_min` over the epochs that distil (T_max the
run's epoch count; Fast's warm-up epochs do not advance it); loss tau^2 KL(p_T || p_S), batchmean.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.utils import make_grid
from pytorch_lightning.loggers import TensorBoardLogger

from zskt.methods.base import DistillationModule, RunInputs
from zskt.rng import PicklableGenerators
from zskt.synthesis.bn_statistics import BatchNormStatistics
from zskt.synthesis.losses import kd_loss
from zskt.validation import check


@contextlib.contextmanager
def frozen(network: nn.Module):
    """No weight gradients for `network` inside the block (gradients still flow through it to its input)."""
    flags = [p.requires_grad for p in network.parameters()]
    network.requires_grad_(False)
    try:
        yield network
    finally:
        for p, flag in zip(network.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class DataFreeModule(PicklableGenerators, DistillationModule):
    """A student distilled from a frozen teacher on synthesised images; the subclasses synthesise."""

    trains = True
    uses_train_data = False
    uses_attention = False
    logs_in_iterations = True

    @classmethod
    def run_kwargs(cls, run: RunInputs) -> dict:
        """The teacher, and `normalization`: the dataset's {"mean", "std"}, which maps the synthesised
        [0, 1] images to the networks' inputs."""
        datamodule = run.datamodule
        return {**super().run_kwargs(run), "normalization": {"mean": list(datamodule.mean), "std": list(datamodule.std)}}

    def __init__(self, name: str, student: dict, teacher: nn.Module, normalization: dict, channels_last: bool,
                 compile: bool, bn_momentum: float | None = None) -> None:
        super().__init__(name, student, teacher, channels_last, compile)
        self.pixel_mean = list(map(float, normalization["mean"]))
        self.pixel_std = list(map(float, normalization["std"]))
        self.register_buffer("mean", torch.tensor(self.pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.pixel_std).view(1, -1, 1, 1), persistent=False)
        self.bn_statistics = BatchNormStatistics(self.teacher, momentum=bn_momentum)

    # ------------------------------------------------------------------ pixels <-> network inputs
    def normalize(self, pixels: Tensor) -> Tensor:
        """[0, 1] images -> the networks' input (memory format included)."""
        return self.to_input((pixels - self.mean) / self.std)

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    # ------------------------------------------------------------------ the student's step
    def distill(self, x: Tensor, opt_s, temperature: float) -> Tensor:
        """One student step on the (normalised) batch `x`: tau^2 KL(p_T || p_S), batchmean; the teacher's
        logits without gradient. The student's gradients are zeroed first (synthesis back-propagates
        through it)."""
        self.student.train()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss = kd_loss(self.student(x), teacher_logits, temperature)
        opt_s.zero_grad()
        self.manual_backward(loss)
        opt_s.step()
        return loss.detach()

    def student_optimizer(self, lr: float, momentum: float, weight_decay: float, lr_min: float, epochs: int):
        """SGD and its cosine schedule (stepped by hand, once per distilling benchmark epoch)."""
        for key, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            check(f"method.{key}", value)
        opt = torch.optim.SGD(self.student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=lr_min)
        return opt, sched

    # ------------------------------------------------------------------ views
    def log_images(self, tag: str, pixels: Tensor, nrow: int = 8) -> None:
        """A grid of [0, 1] images in TensorBoard at the run's iteration (rank zero)."""
        logger = next((lg for lg in self.trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None or not self.trainer.is_global_zero or len(pixels) == 0:
            return
        grid = make_grid(pixels.detach().float().cpu().clamp(0, 1), nrow=nrow)
        logger.experiment.add_image(tag, grid, self.iteration)

    # ------------------------------------------------------------------ state
    def random_streams(self) -> dict[str, torch.Generator]:
        """The run's own random streams (subclasses: name -> generator); saved in every checkpoint."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["random_streams"] = {k: g.get_state() for k, g in self.random_streams().items()}
        checkpoint["bn_statistics"] = self.bn_statistics.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        for name, generator in self.random_streams().items():
            generator.set_state(checkpoint["random_streams"][name].to(torch.uint8).clone())
        self.bn_statistics.load_state_dict(checkpoint.get("bn_statistics", {}))

    # ------------------------------------------------------------------ budget
    # A Lightning epoch is one benchmark epoch; the subclasses set `max_epochs`, `eval_every`
    # (benchmark epochs between test evaluations and checkpoints), `total_iterations` and `iteration`.
    def trainer_kwargs(self) -> dict:
        # the loader is rebuilt every epoch: its length is that epoch's batches
        return {**super().trainer_kwargs(), "reload_dataloaders_every_n_epochs": 1}

    def epoch_batches(self) -> int:
        """Training batches (`training_step` calls) left in the current benchmark epoch, from the run's own
        counters (on resume Lightning builds the loader before it moves on to the next epoch)."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        # one placeholder item per batch (the data is synthesised); under DDP Lightning shards it
        return DataLoader(range(self.epoch_batches() * self.trainer.world_size), batch_size=None)

    def images_so_far(self) -> int:
        return self.student_images(self.iteration, self.trainer.world_size)

    def budget(self, world_size: int, train_images: int) -> dict:
        return {"iterations": self.total_iterations, "epochs": self.max_epochs,
                "budget_scale": self.hparams.budget_scale,
                "student_images": self.student_images(self.total_iterations, world_size)}



class MemoryBankModule(DataFreeModule):
    """A data-free method whose student learns from a memory bank of synthesised images (DeepInversion,
    Fast): the subclass makes `self.bank` (zskt.synthesis.memory_bank), `self.noise` and `self.augment`
    (torch.Generator) in its constructor, and counts `steps_per_epoch` student steps an epoch."""

    def remaining_student_steps(self) -> int:
        """The epoch's remaining student steps (all of them, unless resumed from a mid-epoch checkpoint)."""
        done = self.iteration
        return min(self.steps_per_epoch - done % self.steps_per_epoch, self.total_iterations - done)

    def epoch_batches(self) -> int:
        return self.remaining_student_steps()

    def student_images(self, iterations: int, world_size: int) -> int:
        return iterations * self.hparams.batch_size * world_size

    def random_streams(self) -> dict[str, torch.Generator]:
        return {"noise": self.noise, "augment": self.augment}

    def setup(self, stage: str) -> None:
        # every rank its own streams; the offsets keep the three apart
        seed = self.hparams.noise_seed + self.global_rank
        self.noise.manual_seed(seed)
        self.augment.manual_seed(seed + 1_000_003)
        self.bank.generator.manual_seed(seed + 2_000_006)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.state.fn == "fit":
            self.log_images("synthesis/latest_batch", self.bank.latest(64))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["memory_bank"] = self.bank.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.bank.load_state_dict(checkpoint["memory_bank"])

def epoch_plan(epochs: int, budget_scale: float) -> tuple[int, float]:
    """(benchmark epochs to run, the factor each epoch's own lengths shrink by). A budget of at least one
    epoch runs round(epochs * budget_scale) full epochs; below one epoch (a smoke test) it runs one
    epoch whose student and synthesis steps are multiplied by epochs * budget_scale (at least 1 each)."""
    check("method.budget_scale", budget_scale)
    length = epochs * budget_scale
    return (max(1, round(length)), 1.0) if length >= 1 else (1, length)


def shrunk(n: int, factor: float) -> int:
    return max(1, round(n * factor))
