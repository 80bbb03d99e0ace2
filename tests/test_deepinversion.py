"""method=deepinversion: one benchmark epoch of the module under a real Trainer against a plain loop of
docs/method.md#deepinversion written here, exact resume (the memory bank is state), the budget."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zskt.run
from datafree_helpers import MEAN, STD, STUDENT, build, kd, plain_bn_loss, tensorboard_view, tensors_equal, \
    tiny_overrides
from test_reference_loop import StepRecorder, assert_same_optimizer, assert_states_match, check_and_follow, \
    random_teacher, snapshot, trainer
from zskt.models import WideResNet
from zskt_test_helpers import compose_run_config, learning_curve, straight_and_resumed

BATCH, STEPS, KD_STEPS, EPOCHS, SEED = 8, 3, 2, 3, 4


def js(s, t, tau=3.0, low=0.01, high=0.99):
    """NVlabs' Jensen-Shannon: M formed first, then P, Q, M clamped; 1/2 KL(M||P) + 1/2 KL(M||Q), batchmean."""
    p, q = (s / tau).softmax(1), (t / tau).softmax(1)
    m = ((p + q) / 2).clamp(low, high)
    p, q = p.clamp(low, high), q.clamp(low, high)
    return 0.5 * (m * (m.log() - p.log())).sum(1).mean() + 0.5 * (m * (m.log() - q.log())).sum(1).mean()


def tv(x):
    return sum(d.abs().mean() for d in (x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
                                        x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:]))


def cifar_transform(pixels, generator):
    """Zero-pad 4, random 32x32 crop, flip with p = 0.5, each image on its own."""
    b = len(pixels)
    offsets = torch.randint(0, 9, (2, b), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    padded = F.pad(pixels, (4, 4, 4, 4))
    out = torch.stack([padded[i, :, offsets[0, i]:offsets[0, i] + 32, offsets[1, i]:offsets[1, i] + 32] for i in range(b)])
    return torch.where(flips[:, None, None, None], out.flip(3), out)


@pytest.mark.parametrize("keep", ["last", "best"])
def test_one_deepinversion_epoch_follows_the_reference_loop(tmp_path, keep):
    teacher = random_teacher(logit_scale=10.0)
    torch.manual_seed(0)
    module = build(tmp_path, "deepinversion", teacher, epochs=EPOCHS, kd_steps=KD_STEPS, batch_size=BATCH,
                   synthesis_steps=STEPS, noise_seed=SEED, keep=keep)
    recorder = StepRecorder("student")
    fitted = trainer(callbacks=[recorder])
    fitted.fit(module)
    assert [s.net for s in recorder.steps] == ["student"] * KD_STEPS

    student = WideResNet(**STUDENT)
    student.load_state_dict(recorder.initial["student"])
    student.eval()  # during synthesis
    noise = torch.Generator().manual_seed(SEED)
    # the synthesis call: x ~ N(0, I) in normalised space, sorted uniform labels, Adam 0.1 (0.5, 0.99)
    x = torch.randn(BATCH, 3, 32, 32, generator=noise).requires_grad_(True)
    y = torch.randint(10, (BATCH,), generator=noise).sort().values
    opt_x = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.99))
    best, best_loss = None, math.inf
    for _ in range(STEPS):
        d1, d2 = (int(v) for v in torch.randint(-4, 5, (2,), generator=noise))  # one roll and flip per step
        x_hat = torch.roll(x, (d1, d2), (2, 3))
        if torch.rand(1, generator=noise) < 0.5:
            x_hat = x_hat.flip(3)
        t, bn, _ = plain_bn_loss(teacher, x_hat)
        # 10 L_BN + CE(t, y) - JS_3(s, t) + 0.001 TV(x) (+ 0 ||x||)
        loss = 10.0 * bn + F.cross_entropy(t, y) - js(student(x_hat), t) + 1e-3 * tv(x)
        if float(loss.detach()) < best_loss:
            best, best_loss = x.detach().clone(), float(loss)
        opt_x.zero_grad()
        loss.backward()
        opt_x.step()
        with torch.no_grad():  # each channel clamped to the normalised image of [0, 1]
            x.copy_(torch.maximum(torch.minimum(x, (1 - MEAN) / STD), -MEAN / STD))
    kept = (x.detach() if keep == "last" else best) * STD + MEAN
    pixels = (kept.clamp(0, 1) * 255).to(torch.uint8)  # truncated, as the benchmark's PNG files
    assert (module.bank.images.int() - pixels.int()).abs().max() <= 1  # fp32 op order: at most one level apart
    assert len(module.bank) == BATCH

    # the student steps: batches from one shuffled pass over the bank, the CIFAR train transform, KL at tau 20
    opt_s = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=EPOCHS, eta_min=2e-4)
    bank = module.bank.images.float() / 255  # the module's own pixels (see the assertion above)
    shuffle = torch.Generator().manual_seed(SEED + 2_000_006)
    order = torch.randperm(BATCH, generator=shuffle)  # a new pass after the synthesis call
    augment = torch.Generator().manual_seed(SEED + 1_000_003)
    position = 0
    for k in range(KD_STEPS):
        if position >= BATCH:
            order, position = torch.randperm(BATCH, generator=shuffle), 0  # a pass ends: reshuffle
        batch = bank[order[position:position + BATCH]]
        position += BATCH
        x_s = (cifar_transform(batch, augment) - MEAN) / STD
        student.train()
        with torch.no_grad():
            t_s = teacher(x_s)
        loss_s = kd(student(x_s), t_s, 20.0)
        student.zero_grad()
        loss_s.backward()
        check_and_follow(recorder.steps[k], "student", {"student": student}, opt_s, f"student step {k}")
    sched.step()
    assert_states_match({"student": student}, {"student": snapshot(module.student)}, "after the epoch")
    assert_states_match({"teacher": teacher}, {"teacher": snapshot(module.teacher)}, "teacher")
    cosine = 2e-4 + (0.1 - 2e-4) * (1 + math.cos(math.pi / EPOCHS)) / 2
    assert_same_optimizer(fitted.optimizers[0], module.student, opt_s, student, cosine)
    assert torch.equal(module.augment.get_state(), augment.get_state())
    assert torch.equal(module.bank.generator.get_state(), shuffle.get_state())


def test_budget_scale_shrinks_epochs_then_the_epoch_itself(tmp_path):
    teacher = random_teacher()
    full = build(tmp_path, "deepinversion", teacher)
    assert (full.max_epochs, full.steps_per_epoch, full.inversion_steps, full.total_iterations) == (200, 400, 1000, 80000)
    small = build(tmp_path, "deepinversion", teacher, budget_scale=0.01)
    assert (small.max_epochs, small.steps_per_epoch, small.inversion_steps) == (2, 400, 1000)
    tiny = build(tmp_path, "deepinversion", teacher, budget_scale=1e-5)  # debug=fast: 1 epoch of 1 step, 2 inversion steps
    assert (tiny.max_epochs, tiny.steps_per_epoch, tiny.inversion_steps) == (1, 1, 2)


def test_resume_is_exact_with_the_memory_bank_as_state(tmp_path, teacher_zoo):
    overrides = tiny_overrides(teacher_zoo, "deepinversion", "method.epochs=3", "method.kd_steps=3",
                               "method.synthesis_steps=3")
    straight, resumed, a, b = straight_and_resumed(tmp_path, overrides, kill_epoch=2)
    assert a["iteration"] == b["iteration"] == 9
    assert len(a["memory_bank"]["images"]) == 3 * 16  # one batch per epoch
    assert torch.equal(a["memory_bank"]["images"], b["memory_bank"]["images"])
    assert tensors_equal(a["state_dict"], b["state_dict"], "student.")
    assert resumed["test_acc"] == straight["test_acc"] and learning_curve(resumed) == learning_curve(straight)
    assert straight["budget"]["student_images"] == 9 * 16
    # TensorBoard counts student steps: evaluations at 3, 6, 9; the latest banked batch as a grid
    scalars, images = tensorboard_view(tmp_path / "a" / "run")
    assert scalars["eval/acc"] == [3, 6, 9] and set(scalars["train/student_loss"]) <= set(range(1, 10))
    assert "synthesis/latest_batch" in images


def test_debug_fast_is_a_smoke_test(tmp_path, teacher_zoo):
    results = zskt.run.execute(compose_run_config(tmp_path, tiny_overrides(teacher_zoo, "deepinversion", "debug=fast")))
    assert results["budget"]["iterations"] == 1 and 0 <= results["test_acc"] <= 100
