"""The algorithm locked to a reference loop.

Each method's module, built from the package's own config (conf/method/*.yaml) and trained under
a real Lightning Trainer (fp32, CPU), is checked against a plain PyTorch loop of the study's
algorithm written here from docs/method.md (losses, algorithms), with this file's own loss code. From identical
initial weights and the same noise, at every optimiser step the reference computes its own batch,
losses and clipped gradients and must find the module's weights, BN buffers, gradients and
learning rate; then it steps its own optimiser (the published hyperparameters). At the end both hold
the same networks, optimiser state and learning rates. Only the public surface of the package
is used: the constructors (via Hydra), the module attributes `student`, `generator`, `teacher`,
`noise`, and Lightning's optimiser hook and optimisers.

Why the reference steps on the module's gradients (teacher forcing) rather than its own: Adam's
first step moves every weight by about lr * g / (|g| + 1e-8), so a gradient element below
Adam's eps moves by an amount set by its rounding error. The generator's conv biases (each before a
BatchNorm) have an exactly zero true gradient (the batch statistics cancel them), so their
update is pure rounding noise of up to lr; two correct fp32 implementations that sum in a
different order end up to 2e-3 apart there, and with `post_update` / `fresh` that spreads into
the student through the next batch. Comparing gradients (well conditioned) at every step and
feeding both optimisers the same gradient checks every part of the algorithm to ~1e-5 without
that noise. The modules run with `channels_last` off, the plain reference's memory format: with
it on (a speed switch, the same maths) other conv kernels round differently, and behind a
batch-statistics BatchNorm that grew to 1e-3 relative in a few of the stem's gradient elements.

The published numbers (docs/method.md#hyperparameters) are spelled out below on purpose: a config
that drifts from them fails here.
"""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from zskt_test_helpers import WRN_GROUPS, compose_run_config
from zskt.models import Generator, WideResNet

C = 10
CHANNELS_LAST = False  # channels_last off: the same conv kernels as the plain reference (see the docstring)
STUDENT = {"depth": 10, "width": 1, "num_classes": C}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}  # fp32 weights and buffers under different op orders
GRAD_RTOL = 1e-4  # gradients: relative, plus 1e-5 of the step's largest element for those near zero


# ------------------------------------------------------------ the losses of docs/method.md#losses, written plainly
def kl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """KL(t || s) summed over classes and batch, divided by B * C (kl_div's reduction='mean')."""
    t = (teacher_logits / tau).softmax(1)
    return (t * ((teacher_logits / tau).log_softmax(1) - (student_logits / tau).log_softmax(1))).sum() / t.numel()


def attention(a: Tensor) -> Tensor:
    """Channel mean of A^2, flattened, L2-normalised per sample (eps 1e-12)."""
    q = a.pow(2).mean(1).flatten(1)
    return q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)


def at_sum(student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
    """Sum over the three groups of the squared map difference averaged over batch and positions."""
    return sum(((attention(s) - attention(t)) ** 2).mean() for s, t in zip(student_features, teacher_features))


def kd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, tau: float) -> Tensor:
    """(1 - alpha) CE + 2 alpha tau^2 KL."""
    return (1 - alpha) * F.cross_entropy(student_logits, labels) + 2 * alpha * tau**2 * kl(
        student_logits, teacher_logits, tau)


# ---------------------------------------------------------------------------- shared set-up
def random_teacher(logit_scale: float = 1.0, seed: int = 1) -> WideResNet:
    """A frozen WRN-10-2 with random weights and random BN running statistics (so eval mode
    matters); `logit_scale` multiplies its last layer (a confident teacher, like a trained one)."""
    torch.manual_seed(seed)
    teacher = WideResNet(10, 2, C)
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        teacher.fc.weight.mul_(logit_scale)
    return teacher.eval().requires_grad_(False)


def build_method(tmp_path, method: str, teacher: nn.Module, **sizes) -> pl.LightningModule:
    """The module `python -m zskt.run method=<method> channels_last=false` builds, with its
    config's values as they are and only the sizes in `sizes` changed."""
    cfg = compose_run_config(tmp_path, [f"method={method}", "dataset=cifar10"])
    if get_class(cfg.method._target_).uses_attention:  # both WRNs: their three groups
        sizes = {"attention_layers": {"student": WRN_GROUPS, "teacher": WRN_GROUPS}, **sizes}
    return instantiate(cfg.method, student=dict(STUDENT), teacher=copy.deepcopy(teacher),
                       channels_last=CHANNELS_LAST, compile=False, _convert_="all", **sizes)


def trainer(**arguments) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=1, limit_val_batches=0,
                      num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **arguments)


def snapshot(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@dataclass
class Step:
    net: str                                # the network whose optimiser stepped
    grads: dict[str, Tensor]                # its gradients as the optimiser saw them (after clipping)
    states: dict[str, dict[str, Tensor]]    # every network's weights and buffers, before the update
    lr: float


class StepRecorder(pl.Callback):
    """The networks when training starts, and at every optimiser step a `Step`."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.initial: dict[str, dict[str, Tensor]] = {}
        self.steps: list[Step] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {n: snapshot(getattr(pl_module, n)) for n in self.names}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        (name,) = [n for n in self.names if {id(p) for p in getattr(pl_module, n).parameters()} == ids]
        grads = {k: p.grad.detach().clone() for k, p in getattr(pl_module, name).named_parameters()}
        states = {n: snapshot(getattr(pl_module, n)) for n in self.names}
        self.steps.append(Step(name, grads, states, optimizer.param_groups[0]["lr"]))


def assert_states_match(nets: dict[str, nn.Module], states: dict[str, dict[str, Tensor]], when: str) -> None:
    for name, net in nets.items():
        mine = net.state_dict()
        assert mine.keys() == states[name].keys()
        for key in mine:
            torch.testing.assert_close(states[name][key], mine[key], **TOLERANCE,
                                       msg=lambda m: f"{when}: {name}.{key}: {m}")


def check_and_follow(step: Step, name: str, nets: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                     when: str) -> None:
    """The module's step `step` is the reference's: the same network stepping, the same learning
    rate, the same state and (clipped) gradients. Then the reference takes the module's state and
    gradients and steps its own optimiser (see the module docstring)."""
    assert step.net == name, when
    assert step.lr == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), when
    assert_states_match(nets, step.states, when)
    mine = dict(nets[name].named_parameters())
    scale = max(float(p.grad.abs().max()) for p in mine.values() if p.grad is not None)
    assert mine.keys() == step.grads.keys()
    for key, p in mine.items():
        assert p.grad is not None, f"{when}: {name}.{key} has no gradient in the reference"
        torch.testing.assert_close(step.grads[key], p.grad, rtol=GRAD_RTOL, atol=1e-5 * scale,
                                   msg=lambda m: f"{when}: gradient of {name}.{key}: {m}")
    for other, net in nets.items():
        net.load_state_dict(step.states[other])
    for key, p in mine.items():
        p.grad = step.grads[key].contiguous()
    optimizer.step()


def optimizer_of(fitted: pl.Trainer, net: nn.Module) -> torch.optim.Optimizer:
    """The Trainer's optimiser that holds exactly `net`'s parameters."""
    ids = [id(p) for p in net.parameters()]
    (found,) = [o for o in fitted.optimizers if [id(p) for g in o.param_groups for p in g["params"]] == ids]
    return found


def assert_same_optimizer(got: torch.optim.Optimizer, got_net: nn.Module, want: torch.optim.Optimizer,
                          want_net: nn.Module, lr: float) -> None:
    """The same learning rate (`lr`, the published schedule) and the same per-parameter state."""
    assert [g["lr"] for g in got.param_groups] == pytest.approx([lr], rel=1e-12)
    assert [g["lr"] for g in want.param_groups] == pytest.approx([lr], rel=1e-12)
    for p, q in zip(got_net.parameters(), want_net.parameters(), strict=True):
        assert got.state[p].keys() == want.state[q].keys()
        for key in want.state[q]:
            torch.testing.assert_close(got.state[p][key].float(), want.state[q][key].float(), **TOLERANCE,
                                       msg=lambda m: f"optimiser {key}: {m}")


# ---------------------------------------------------------------------------- zero-shot (Algorithm 1)
ITERATIONS = 4   # the cosine's length: one iteration runs, so both lrs must end at cos(pi / 4)
BATCH = 8
N_S = 2
NOISE_SEED = 7


def zero_shot_reference(initial: dict, steps: list[Step], teacher: nn.Module, student_batch: str,
                        balance_weight: float = 0.0):
    """One iteration of docs/method.md#zero-shot-transfer, plainly, checked step by step against the
    module's `steps`; `balance_weight`: the opt-in class prior on the generator's loss.
    Returns the reference networks, its two optimisers and the gradient norms before clipping."""
    student, generator = WideResNet(**STUDENT), Generator()
    nets = {"student": student, "generator": generator}
    for name, net in nets.items():
        net.load_state_dict(initial[name])
    student.train(), generator.train(), teacher.eval()  # the generator always uses batch statistics
    opt_s = torch.optim.Adam(student.parameters(), lr=2e-3)  # no weight decay
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
    sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=ITERATIONS)  # to 0 over the run
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=ITERATIONS)
    noise = torch.Generator().manual_seed(NOISE_SEED)  # the run's own stream: noise_seed + rank 0
    assert [s.net for s in steps] == ["generator"] + ["student"] * N_S  # n_G = 1, then n_S
    norms = []

    # 1. z ~ N(0, I), x = G(z)
    z = torch.randn(BATCH, 100, generator=noise)
    x = generator(z)
    # 2. generator step: teacher (eval) and student (train mode) on x, loss -KL(t || s), into G only
    student.requires_grad_(False)
    t = teacher(x)
    loss_g = -kl(student(x), t, tau=1.0)
    if balance_weight:  # + w * sum_c pbar_c log pbar_c, pbar the batch-mean teacher softmax
        pbar = t.softmax(1).mean(0)
        loss_g = loss_g + balance_weight * (pbar * pbar.log()).sum()
    generator.zero_grad()
    loss_g.backward()
    student.requires_grad_(True)
    norms.append(float(torch.nn.utils.clip_grad_norm_(generator.parameters(), 5.0)))
    check_and_follow(steps[0], "generator", nets, opt_g, "generator step")

    # 3. n_S student steps on a detached batch: the x of step 1, made before G's update
    # (pre_update, the study); G(z) regenerated once by the updated G (post_update, the authors'
    # code); or a new z and batch from the updated G for every step (fresh, modified zero-shot)
    for k, step in enumerate(steps[1:]):
        if student_batch == "pre_update":
            x_s = x.detach()
        elif student_batch == "fresh" or k == 0:
            with torch.no_grad():
                x_s = generator(z if student_batch == "post_update" else torch.randn(BATCH, 100, generator=noise))
        with torch.no_grad():
            t_logits, t_features = teacher(x_s, return_features=True)
        s_logits, s_features = student(x_s, return_features=True)
        loss_s = kl(s_logits, t_logits, tau=1.0) + 250.0 * at_sum(s_features, t_features)
        student.zero_grad()
        loss_s.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)))
        check_and_follow(step, "student", nets, opt_s, f"student step {k + 1}")

    # 4. both cosine schedules, once per iteration
    sched_s.step()
    sched_g.step()
    return nets, opt_s, opt_g, norms


@pytest.mark.parametrize(("student_batch", "balance_weight"),
                         [("pre_update", 0.0), ("post_update", 0.0), ("fresh", 0.0), ("pre_update", 3.0)])
def test_one_zero_shot_iteration_follows_the_reference_loop(tmp_path, student_batch, balance_weight):
    # a confident teacher and a student with a small stem: every gradient norm exceeds the clip
    teacher = random_teacher(logit_scale=1000.0 if not balance_weight else 3.0)  # a softmax with a gradient
    torch.manual_seed(0)
    module = build_method(tmp_path, "zero_shot", teacher, iterations=ITERATIONS, eval_every=1, batch_size=BATCH,
                          n_student_steps=N_S, student_batch=student_batch, noise_seed=NOISE_SEED,
                          balance_weight=balance_weight)
    with torch.no_grad():
        module.student.conv1.weight.mul_(0.2)
    recorder = StepRecorder("student", "generator")
    fitted = trainer(limit_train_batches=1, callbacks=[recorder])
    fitted.fit(module)

    nets, opt_s, opt_g, norms = zero_shot_reference(recorder.initial, recorder.steps, teacher, student_batch,
                                                    balance_weight)
    if not balance_weight:
        assert min(norms) > 5.0, norms  # the clip at 5 acted on every step
    assert_states_match(nets, {n: snapshot(getattr(module, n)) for n in nets}, "after the iteration")
    assert_states_match({"teacher": teacher}, {"teacher": snapshot(module.teacher)}, "teacher")  # frozen
    # the module drew exactly the noise the reference drew
    drawn = torch.Generator().manual_seed(NOISE_SEED)
    torch.randn(BATCH * (1 + (N_S if student_batch == "fresh" else 0)), 100, generator=drawn)
    assert torch.equal(module.noise.get_state(), drawn.get_state())
    cosine = (1 + math.cos(math.pi / ITERATIONS)) / 2  # CosineAnnealingLR stepped once
    assert_same_optimizer(optimizer_of(fitted, module.student), module.student, opt_s, nets["student"], 2e-3 * cosine)
    assert_same_optimizer(optimizer_of(fitted, module.generator), module.generator, opt_g, nets["generator"],
                          1e-3 * cosine)


# ---------------------------------------------------------------------------- few-shot KD+AT, fine-tune
def labelled_batches(n_batches: int, batch: int = 8) -> tuple[Tensor, Tensor]:
    images = torch.randn(n_batches * batch, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    labels = torch.randint(0, C, (n_batches * batch,), generator=torch.Generator().manual_seed(6))
    return images, labels


def loader(images: Tensor, labels: Tensor, batch: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=False)


class Batches(pl.LightningDataModule):
    """Fixed labelled batches, in order, for training and evaluation."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        super().__init__()
        self.images, self.labels = images, labels

    def train_dataloader(self) -> DataLoader:
        return loader(self.images, self.labels)

    def val_dataloader(self) -> DataLoader:
        return loader(self.images, self.labels)


EPOCHS = 10  # the schedule's length; one epoch of two batches runs


def test_one_kd_at_epoch_follows_the_reference_loop(tmp_path):
    teacher = random_teacher(logit_scale=10.0)
    torch.manual_seed(0)
    module = build_method(tmp_path, "kd_at", teacher, m=10, epochs=EPOCHS)
    recorder = StepRecorder("student")
    fitted = trainer(callbacks=[recorder])
    images, labels = labelled_batches(2)
    fitted.fit(module, train_dataloaders=loader(images, labels))

    # the recipe: SGD lr 0.1, momentum 0.9, Nesterov, wd 5e-4; lr / 5 at 30, 60, 80 % of the epochs
    student = WideResNet(**STUDENT)
    student.load_state_dict(recorder.initial["student"])
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 6, 8], gamma=0.2)
    assert len(recorder.steps) == 2
    for k, (x, y) in enumerate(loader(images, labels)):
        with torch.no_grad():
            t_logits, t_features = teacher(x, return_features=True)
        s_logits, s_features = student(x, return_features=True)
        # (1 - alpha) CE + 2 alpha tau^2 KL + beta sum AT, alpha 0.9, tau 4, beta 1000
        loss = kd(s_logits, t_logits, y, alpha=0.9, tau=4.0) + 1000.0 * at_sum(s_features, t_features)
        student.zero_grad()
        loss.backward()
        check_and_follow(recorder.steps[k], "student", {"student": student}, opt, f"step {k + 1}")
    sched.step()  # per epoch

    assert_states_match({"student": student}, {"student": snapshot(module.student)}, "after the epoch")
    assert_states_match({"teacher": teacher}, {"teacher": snapshot(module.teacher)}, "teacher")
    assert_same_optimizer(fitted.optimizers[0], module.student, opt, student, 0.1)


def test_one_finetune_epoch_follows_the_reference_loop(tmp_path):
    teacher = random_teacher(logit_scale=10.0)
    torch.manual_seed(0)
    module = build_method(tmp_path, "finetune", teacher, m=10, student_checkpoint="zero-shot-student.pt",
                          epochs=EPOCHS)
    with torch.no_grad():  # a "zero-shot student": BN statistics of its own, which must stay frozen
        for m in module.student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    recorder = StepRecorder("student")
    fitted = trainer(callbacks=[recorder])
    images, labels = labelled_batches(2)
    fitted.fit(module, datamodule=Batches(images, labels))

    # the recipe: Adam lr 5e-4, cosine over the epochs stepped per epoch; the student in eval mode
    student = WideResNet(**STUDENT)
    student.load_state_dict(recorder.initial["student"])
    student.eval()  # BN statistics frozen, BN affine parameters still trained
    theta_0 = [p.detach().clone() for p in student.parameters()]
    opt = torch.optim.Adam(student.parameters(), lr=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    assert len(recorder.steps) == 2
    for k, (x, y) in enumerate(loader(images, labels)):
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        # (1 - alpha) CE + 2 alpha tau^2 KL, alpha 0.9, tau 4, + lambda sum mean |theta - theta_0|, lambda 1
        anchor = sum((p - p0).abs().mean() for p, p0 in zip(student.parameters(), theta_0))
        loss = kd(s_logits, t_logits, y, alpha=0.9, tau=4.0) + 1.0 * anchor
        student.zero_grad()
        loss.backward()
        check_and_follow(recorder.steps[k], "student", {"student": student}, opt, f"step {k + 1}")
    sched.step()

    assert_states_match({"student": student}, {"student": snapshot(module.student)}, "after the epoch")
    for key in ("running_mean", "running_var"):  # eval mode: the zero-shot statistics, untouched
        assert all(torch.equal(v, recorder.initial["student"][k]) for k, v in snapshot(module.student).items()
                   if k.endswith(key))
    assert_same_optimizer(fitted.optimizers[0], module.student, opt, student,
                          5e-4 * (1 + math.cos(math.pi / EPOCHS)) / 2)


# ---------------------------------------------------------------------------- belief matching (Algorithm 2)
def reference_belief_matching(student: nn.Module, teacher: nn.Module, images: Tensor, n: int, k_steps: int,
                              xi: float, seed: int) -> tuple[Tensor, Tensor, float]:
    """docs/method.md#adversarial-belief-matching plainly: the first n images of a seeded shuffle on
    which both nets predict the same class i; for each and each target j != i, K raw gradient steps
    on CE(student(x), j) from the clean image, p_j under both before every step. Returns both
    transition curves (K,) and the MTE."""
    with torch.no_grad():
        agree = student(images).argmax(1) == teacher(images).argmax(1)
        classes = student(images).argmax(1)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    chosen = [int(i) for i in order if agree[i]][:n]
    p_s, p_t = [], []
    for index in chosen:
        for j in range(C):
            if j == int(classes[index]):
                continue
            x = images[index:index + 1].clone()
            curve_s, curve_t = [], []
            for _ in range(k_steps):
                x.requires_grad_(True)
                logits = student(x)
                with torch.no_grad():
                    curve_s.append(float(logits.softmax(1)[0, j]))
                    curve_t.append(float(teacher(x).softmax(1)[0, j]))
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([j])), x)
                x = (x - xi * grad).detach()
            p_s.append(curve_s)
            p_t.append(curve_t)
    p_s, p_t = torch.tensor(p_s, dtype=torch.float64), torch.tensor(p_t, dtype=torch.float64)
    return p_s.mean(0), p_t.mean(0), float((p_s - p_t).abs().mean())


def test_belief_matching_curves_and_mte_equal_the_reference(tmp_path):
    torch.manual_seed(3)
    student = WideResNet(**STUDENT).eval()  # random weights and BN statistics
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        student.fc.weight.mul_(10.0)
    teacher = copy.deepcopy(student)  # a teacher that agrees with the student on most images, not all
    with torch.no_grad():
        teacher.fc.weight.add_(0.5 * torch.randn(teacher.fc.weight.shape, generator=torch.Generator().manual_seed(1)))
    # 16x16: a WRN pools whatever the size, and the per-image reference walk runs 4x faster
    images = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images *= torch.linspace(0.2, 3.0, 24)[:, None, None, None]  # varied inputs: varied predictions
    labels = torch.zeros(24, dtype=torch.long)

    module = build_method(tmp_path, "abm", teacher, student_checkpoint="student.pt", output_dir=str(tmp_path),
                          k=3, xi=1.0, n_images=3, seed=2, batch_images=3, plot_k=2, step_on="student")
    module.student.load_state_dict(student.state_dict())
    trainer(inference_mode=False).test(module, dataloaders=loader(images, labels), verbose=False)

    want_s, want_t, want_mte = reference_belief_matching(student, teacher, images, 3, 3, 1.0, seed=2)
    rows = list(csv.DictReader((tmp_path / "transition_curves.csv").read_text().splitlines()))
    assert [int(r["k"]) for r in rows] == [0, 1, 2]
    got_s = torch.tensor([float(r["p_student"]) for r in rows], dtype=torch.float64)
    got_t = torch.tensor([float(r["p_teacher"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got_s, want_s, atol=2e-6, rtol=0)  # the CSV holds 6 decimals
    torch.testing.assert_close(got_t, want_t, atol=2e-6, rtol=0)
    assert module.results["mte"] == pytest.approx(want_mte, abs=2e-6)
    assert (want_s[-1] > want_s[0]).item()  # the walk moved towards the targets
