"""The algorithm locked to a reference loop.

Each method's module, built from the package's own config (conf/method/*.yaml) and trained under
a real Lightning Trainer (fp32, CPU), is checked against a plain PyTorch loop of the study's
algorithm written here from SPEC sections 3-4, with this file's own loss code. From identical
initial weights and the same noise, at every optimiser step the reference computes its own batch,
losses and clipped gradients and must find the module's weights, BN buffers, gradients and
learning rate; then it steps its own optimiser (SPEC's hyperparameters). At the end both hold
the same networks, optimiser state and learning rates. Only the public surface of the package
is used: the constructors (via Hydra), the module attributes `student`, `generator`, `teacher`,
`noise`, and Lightning's optimiser hook and optimisers.

Why the reference steps on the module's gradients (teacher forcing) rather than its own: Adam's
first step moves every weight by about lr * g / (|g| + 1e-8), so a gradient element below
Adam's eps moves by an amount set by its rounding error. The generator's biases before a
BatchNorm have an exactly zero true gradient (the batch statistics cancel them), so their
update is pure rounding noise of up to lr; two correct fp32 implementations that sum in a
different order end up to 2e-3 apart there, and with `post_update` / `fresh` that spreads into
the student through the next batch. Comparing gradients (well conditioned) at every step and
feeding both optimisers the same gradient checks every part of the algorithm to ~1e-5 without
that noise.

The SPEC's numbers are spelled out below on purpose: a config that drifts from them fails here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from zskt_test_helpers import compose_run_config
from zskt.models import Generator, WideResNet

C = 10
CL = False  # channels_last off: the same conv kernels as the plain reference (see the docstring)
STUDENT = {"depth": 10, "width": 1, "num_classes": C}
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}  # fp32 weights and buffers under different op orders
GRAD_RTOL = 1e-4  # gradients: relative, plus 1e-5 of the step's largest element for those near zero


# ---------------------------------------------------------------------------- SPEC section 3, written plainly
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
    """The module `python -m zskt.run method=<method>` builds, with its config's values as they
    are (channels_last, the default, included) and only the sizes in `sizes` changed."""
    cfg = compose_run_config(tmp_path, [f"method={method}", "dataset=cifar10"])
    return instantiate(cfg.method, student=dict(STUDENT), teacher=copy.deepcopy(teacher), channels_last=CL,
                       compile=False, _convert_="all", **sizes)


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
    """The same learning rate (`lr`, the SPEC's schedule) and the same per-parameter state."""
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


def zero_shot_reference(initial: dict, steps: list[Step], teacher: nn.Module, student_batch: str):
    """One iteration of SPEC section 4, plainly, checked step by step against the module's `steps`.
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
    loss_g = -kl(student(x), teacher(x), tau=1.0)
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


@pytest.mark.parametrize("student_batch", ["pre_update", "post_update", "fresh"])
def test_one_zero_shot_iteration_follows_the_reference_loop(tmp_path, student_batch):
    # a confident teacher and a student with a small stem: every gradient norm exceeds the clip
    teacher = random_teacher(logit_scale=1000.0)
    torch.manual_seed(0)
    module = build_method(tmp_path, "zero_shot", teacher, iterations=ITERATIONS, eval_every=1, batch_size=BATCH,
                          n_student_steps=N_S, student_batch=student_batch, noise_seed=NOISE_SEED)
    with torch.no_grad():
        module.student.conv1.weight.mul_(0.2)
    recorder = StepRecorder("student", "generator")
    fitted = trainer(limit_train_batches=1, callbacks=[recorder])
    fitted.fit(module)

    nets, opt_s, opt_g, norms = zero_shot_reference(recorder.initial, recorder.steps, teacher, student_batch)
    assert min(norms) > 5.0, norms  # SPEC's clip acted on every step
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
