"""method=fast (Fast-2/5/10): one benchmark epoch of the module under a real Trainer against a plain loop of
docs/method.md#fast written here (MAML and REPTILE meta steps), exact resume (the memory bank, the BN moving
average and the meta optimiser are state), the schedule and the settings."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import zskt.run
from datafree_helpers import MEAN, NORMALIZATION, STD, STUDENT, build, kd, plain_bn_loss, tensors_equal, tiny_overrides
from test_deepinversion import cifar_transform
from test_reference_loop import StepRecorder, assert_same_optimizer, assert_states_match, check_and_follow, \
    optimizer_of, random_teacher, snapshot
from zskt.models import WideResNet
from zskt.models.pixel_generator import PixelGenerator
from zskt_test_helpers import compose_run_config, learning_curve, straight_and_resumed

BATCH, K, KD_STEPS, EPOCHS, SEED = 8, 3, 2, 3, 6


def meta_step(step, generator, nets, opt_meta) -> None:
    """The module's meta step is the reference's. The fast weights' K inner Adam steps run inside the module
    (no teacher forcing there), so a handful of elements whose gradient is near zero take noise-sized Adam
    steps; allow one element in 100,000 of each tensor to differ, then follow the module's gradients."""
    for key, p in generator.named_parameters():
        close = torch.isclose(p.grad, step.grads[key], rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()))
        assert (~close).sum() <= max(1, p.numel() // 100_000), f"meta gradient of {key}: {(~close).sum()} elements differ"
        p.grad = step.grads[key].clone()
    check_and_follow(step, "generator", nets, opt_meta, "meta step")


@pytest.fixture
def float64():
    """fp64 by default inside the test: the K inner Adam steps of the fast weights run without teacher forcing
    (their gradients never leave the module), and Adam turns fp32 rounding in near-zero gradient elements into
    steps of up to lr; in fp64 both implementations agree to ~1e-12."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("meta", ["maml", "reptile"])
def test_one_fast_epoch_follows_the_reference_loop(tmp_path, meta, float64):
    teacher = random_teacher(logit_scale=10.0).double()
    torch.manual_seed(0)
    module = build(tmp_path, "fast", teacher, epochs=EPOCHS, warmup_epochs=0, kd_steps=KD_STEPS, batch_size=BATCH,
                   synthesis_steps=K, noise_seed=SEED, meta=meta)
    recorder = StepRecorder("student", "generator")
    fitted = pl.Trainer(accelerator="cpu", devices=1, precision="64-true", max_epochs=1, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorder])
    fitted.fit(module)
    assert [s.net for s in recorder.steps] == ["generator"] + ["student"] * KD_STEPS  # one meta step, then KD

    student, generator = WideResNet(**STUDENT), PixelGenerator(**NORMALIZATION)
    nets = {"student": student, "generator": generator}
    for name, net in nets.items():
        net.load_state_dict(recorder.initial[name])
    # meta Adam: lr K * 2e-3 (Fast-10's inner lr), betas (0.5, 0.999), kept for the run
    opt_meta = torch.optim.Adam(generator.parameters(), lr=K * 2e-3, betas=(0.5, 0.999))
    noise, augment = torch.Generator().manual_seed(SEED), torch.Generator().manual_seed(SEED + 1_000_003)

    # the synthesis call: fast weights cloned from G, new z and classes, a new Adam (2e-3 for G', 0.01 for z)
    student.eval()
    fast = copy.deepcopy(generator).train()
    z = torch.randn(BATCH, 256, generator=noise).requires_grad_(True)
    y = torch.randint(10, (BATCH,), generator=noise)
    opt = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": 0.01}], lr=2e-3, betas=(0.5, 0.999))
    student.requires_grad_(False)
    best, best_loss = None, math.inf
    for k in range(K):
        pixels = fast.pixels(z)
        x = (cifar_transform(pixels, augment) - MEAN) / STD  # per-image crop and flip, then normalise
        t, bn, stats = plain_bn_loss(teacher, x)  # call 1: no moving average yet
        s = student(x)
        agree = (s.argmax(1) == t.argmax(1)).float()
        adv = -((t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1) * agree).mean()  # masked, / B
        loss = 10.0 * bn + 0.4 * F.cross_entropy(t, y) + 1.1 * adv
        if float(loss.detach()) < best_loss:
            best, best_loss = pixels.detach(), float(loss.detach())
        opt.zero_grad()
        loss.backward()
        if meta == "maml":  # the meta gradient: the sum of the inner steps' gradients w.r.t. the fast weights
            for p, q in zip(generator.parameters(), fast.parameters()):
                p.grad = q.grad.clone() if k == 0 else p.grad + q.grad
            if k == K - 1:
                meta_step(recorder.steps[0], generator, nets, opt_meta)
        opt.step()
    if meta == "reptile":
        for p, q in zip(generator.parameters(), fast.parameters()):
            p.grad = 67.0 * (p.detach() - q.detach())
        meta_step(recorder.steps[0], generator, nets, opt_meta)
    student.requires_grad_(True)
    assert (module.bank.images.int() - (best.clamp(0, 1) * 255).to(torch.uint8).int()).abs().max() <= 1
    for (mean, var), (m_mean, m_var) in zip(stats, module.bn_statistics.average):  # the average := last stats
        torch.testing.assert_close(m_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m_var, var, rtol=1e-4, atol=1e-5)

    # KD: batches of the bank under the CIFAR train transform, KL at tau 20; SGD 0.2, cosine to 2e-4
    opt_s = torch.optim.SGD(student.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=EPOCHS, eta_min=2e-4)
    shuffle = torch.Generator().manual_seed(SEED + 2_000_006)
    bank, order, position = module.bank.images.double() / 255, torch.randperm(BATCH, generator=shuffle), 0
    for k in range(KD_STEPS):
        if position >= BATCH:
            order, position = torch.randperm(BATCH, generator=shuffle), 0
        x_s = (cifar_transform(bank[order[position:position + BATCH]], augment) - MEAN) / STD
        position += BATCH
        student.train()
        with torch.no_grad():
            t_s = teacher(x_s)
        loss_s = kd(student(x_s), t_s, 20.0)
        student.zero_grad()
        loss_s.backward()
        check_and_follow(recorder.steps[1 + k], "student", nets, opt_s, f"student step {k}")
    sched.step()

    assert_states_match(nets, {n: snapshot(getattr(module, n)) for n in nets}, "after the epoch")
    assert_states_match({"teacher": teacher}, {"teacher": snapshot(module.teacher)}, "teacher")
    cosine = 2e-4 + (0.2 - 2e-4) * (1 + math.cos(math.pi / EPOCHS)) / 2
    assert_same_optimizer(optimizer_of(fitted, module.student), module.student, opt_s, student, cosine)
    assert_same_optimizer(optimizer_of(fitted, module.generator), module.generator, opt_meta, generator, K * 2e-3)
    assert torch.equal(module.augment.get_state(), augment.get_state())


def test_the_settings_and_the_schedule(tmp_path, compose_cfg):
    expected = {"fast": (10, 2e-3, 0.01), "fast_2": (2, 5e-3, 0.015), "fast_5": (5, 3e-3, 0.01), "fast_10": (10, 2e-3, 0.01)}
    for name, (k, lr_g, lr_z) in expected.items():
        method = compose_cfg(tmp_path, [f"method={name}"]).method
        assert (method.synthesis_steps, method.generator_lr, method.latent_lr) == (k, lr_g, lr_z), name
        assert (method.bn_weight, method.oh_weight, method.adv_weight, method.bn_momentum) == (10.0, 0.4, 1.1, 0.9)
    teacher = random_teacher()
    full = build(tmp_path, "fast_2", teacher)
    # 220 epochs, 20 of them synthesis only: 200 x 400 student steps; reset at call 140; meta lr 2 x 5e-3
    assert (full.max_epochs, full.warmup_epochs, full.steps_per_epoch, full.total_iterations) == (220, 20, 400, 80000)
    assert (full.reset_call, full.meta_lr) == (140, pytest.approx(0.01))
    assert full.epoch_batches() == 1  # a warm-up epoch
    full.calls = 20
    assert full.epoch_batches() == 400
    small = build(tmp_path, "fast", teacher, budget_scale=0.01)  # a CPU run: 2 epochs, no warm-up left
    assert (small.max_epochs, small.warmup_epochs, small.reset_call) == (2, 0, 1)
    tiny = build(tmp_path, "fast", teacher, budget_scale=1e-5)  # debug=fast: 1 epoch of 1 student step
    assert (tiny.max_epochs, tiny.warmup_epochs, tiny.steps_per_epoch, tiny.total_iterations) == (1, 0, 1, 1)


def test_reset_l0_reinitialises_the_first_linear_and_bn():
    generator = PixelGenerator(**NORMALIZATION)
    before = snapshot(generator)
    generator.reset_first_layers(torch.Generator().manual_seed(0))
    after = snapshot(generator)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"l1.0.weight", "l1.0.bias", "conv_blocks.0.weight"}  # the BN's bias was already 0
    assert float(after["conv_blocks.0.bias"].abs().max()) == 0.0
    assert float(after["conv_blocks.0.weight"].mean().abs()) < 0.01  # N(0, 0.02), as the benchmark's code (sic)
    assert float(after["l1.0.bias"].abs().max()) == 0.0


def test_resume_is_exact_with_the_bank_the_average_and_the_meta_optimiser_as_state(tmp_path, teacher_zoo):
    overrides = tiny_overrides(teacher_zoo, "fast_2", "method.epochs=4", "method.warmup_epochs=1", "method.kd_steps=2",
                               "method.reset_after=1")
    straight, resumed, a, b = straight_and_resumed(tmp_path, overrides, kill_epoch=2)
    assert a["counters"] == b["counters"] == {"iteration": 3 * 2, "calls": 4}
    assert torch.equal(a["memory_bank"]["images"], b["memory_bank"]["images"]) and len(a["memory_bank"]["images"]) == 64
    for x, y in zip(a["bn_statistics"]["average"], b["bn_statistics"]["average"]):
        assert torch.equal(x, y)
    for prefix in ("student.", "generator."):
        assert tensors_equal(a["state_dict"], b["state_dict"], prefix), prefix
    assert resumed["test_acc"] == straight["test_acc"] and learning_curve(resumed) == learning_curve(straight)
    assert [e["student_images"] for e in straight["evaluations"]] == [0, 32, 64, 96]  # the warm-up epoch: none


def test_debug_fast_is_a_smoke_test(tmp_path, teacher_zoo):
    results = zskt.run.execute(compose_run_config(tmp_path, tiny_overrides(teacher_zoo, "fast", "debug=fast")))
    assert results["budget"]["iterations"] == 1 and 0 <= results["test_acc"] <= 100
